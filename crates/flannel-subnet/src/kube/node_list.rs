//! A Node list read as it arrives, in either encoding the API server sends: each Node decoded
//! and handed out as soon as its bytes are in, never the whole list held (the splitters:
//! [`super::list_split`] for JSON, [`super::proto`] for protobuf). No I/O here: the client
//! feeds the response's chunks; the property test feeds any bytes, cut anywhere.

use serde::Deserialize;

use super::annotations::Annotations;
use super::list_split::{ListSplitter, NotAList, Piece};
use super::node::{Node, NodeObject};
use super::proto::{self, ProtoListSplitter};

/// Reads one Node list.
pub(crate) struct NodeListReader {
    splitter: Splitter,
    resource_version: Option<String>,
}

enum Splitter {
    Json(ListSplitter),
    Proto(ProtoListSplitter),
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

impl NodeListReader {
    /// A reader of a list in protobuf (`application/vnd.kubernetes.protobuf`) or JSON.
    pub(crate) fn new(protobuf: bool) -> Self {
        NodeListReader {
            splitter: if protobuf {
                Splitter::Proto(ProtoListSplitter::new())
            } else {
                Splitter::Json(ListSplitter::new())
            },
            resource_version: None,
        }
    }

    /// Feeds the next bytes of the body; `each` gets every Node completed in them. An error
    /// says what in the body is wrong.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        names: &Annotations,
        mut each: impl FnMut(Node),
    ) -> Result<(), String> {
        let protobuf = matches!(self.splitter, Splitter::Proto(_));
        let resource_version = &mut self.resource_version;
        let mut take = |piece: Piece<'_>| -> Result<(), String> {
            match piece {
                Piece::Metadata(b) => {
                    *resource_version = Some(if protobuf {
                        proto::resource_version(b)?
                    } else {
                        serde_json::from_slice::<ListMeta>(b)
                            .map_err(|e| format!("its metadata: {e}"))?
                            .resource_version
                    });
                }
                Piece::Item(b) => {
                    let object = if protobuf {
                        proto::node(b, &names.prefix)
                    } else {
                        serde_json::from_slice::<NodeObject>(b).map_err(|e| e.to_string())
                    }
                    .map_err(|e| format!("a Node: {e}"))?;
                    each(Node::from_object(object, names));
                }
            }
            Ok(())
        };
        match &mut self.splitter {
            Splitter::Json(s) => s.feed(chunk, &mut take),
            Splitter::Proto(s) => s.feed(chunk, &mut take),
        }
    }

    /// The body has ended: the resource version to watch from, or what is missing.
    pub(crate) fn finish(self) -> Result<String, String> {
        match &self.splitter {
            Splitter::Json(s) => s.finish(),
            Splitter::Proto(s) => s.finish(),
        }
        .map_err(|e| e.0)?;
        self.resource_version
            .filter(|rv| !rv.is_empty())
            .ok_or_else(|| "no resourceVersion in its metadata".into())
    }
}

impl From<NotAList> for String {
    fn from(e: NotAList) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::samples::{list_body, node_bytes};
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const JSON_LIST: &[u8] = br#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"42"},"items":[{"metadata":{"name":"a","resourceVersion":"7","annotations":{"flannel.alpha.coreos.com/public-ip":"10.0.0.1","x":"}]\"{["}},"spec":{"podCIDR":"10.1.0.0/24","podCIDRs":["10.1.0.0/24"]}},{"metadata":{"name":"b"},"spec":{}}]}"#;

    /// The resource version and the Nodes of `body` fed in chunks of `size` bytes.
    fn read(body: &[u8], protobuf: bool, size: usize) -> Result<(String, Vec<Node>), String> {
        let names = Annotations::new("flannel.alpha.coreos.com").expect("upstream's prefix");
        let mut reader = NodeListReader::new(protobuf);
        let mut nodes = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            reader.feed(chunk, &names, |n| nodes.push(n))?;
        }
        Ok((reader.finish()?, nodes))
    }

    fn sample(protobuf: bool) -> Vec<u8> {
        if protobuf {
            list_body(&[
                node_bytes("a", "10.1.0.0/24"),
                node_bytes("b", "10.1.1.0/24"),
            ])
        } else {
            JSON_LIST.to_vec()
        }
    }

    #[test]
    fn both_encodings_give_the_nodes_and_the_resource_version() {
        for protobuf in [false, true] {
            let (rv, nodes) = read(&sample(protobuf), protobuf, 5).unwrap();
            assert_eq!(rv, if protobuf { "4242" } else { "42" });
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["a", "b"]);
        }
    }

    /// Whole or cut into chunks of any size, a body gives the same result: what the API
    /// server's chunks are (its HTTP/2 frames, TCP) changes nothing.
    fn same_whole_and_cut(body: &[u8], protobuf: bool, size: usize) -> Result<(), TestCaseError> {
        let whole = read(body, protobuf, body.len());
        let cut = read(body, protobuf, size);
        match (&whole, &cut) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "whole: {whole:?}\nin chunks of {size}: {cut:?}"),
        }
        Ok(())
    }

    proptest! {
        /// A list damaged anywhere (bytes changed, cut short): never a panic, an error or
        /// the same Nodes however it is cut.
        #[test]
        fn a_damaged_list_is_read_alike_whole_or_in_chunks(
            protobuf in any::<bool>(),
            edits in prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
            end in prop::option::of(any::<Index>()),
            size in 1usize..64,
        ) {
            let mut body = sample(protobuf);
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            if let Some(end) = end {
                body.truncate(end.index(body.len() + 1));
            }
            same_whole_and_cut(&body, protobuf, size)?;
        }

        /// Any bytes at all: never a panic.
        #[test]
        fn any_bytes_are_an_error_or_a_list(
            protobuf in any::<bool>(),
            body in prop::collection::vec(any::<u8>(), 0..512),
            size in 1usize..64,
        ) {
            same_whole_and_cut(&body, protobuf, size)?;
        }
    }
}
