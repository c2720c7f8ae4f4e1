//! The Node list in Kubernetes' protobuf encoding, read as it arrives.
//!
//! Measured against a kube-apiserver 1.20 holding 5 000 kubelet-sized Nodes
//! (benches/README.md, 2026-12-06): the list from its watch cache took 1.0-3.4 s as JSON
//! (50 MB), 0.34-0.40 s as gzipped JSON (the server's compression) and 0.11-0.12 s as
//! protobuf (29 MB): the server's JSON encoding is most of a cold start in kube mode. Every
//! API server serves built-in kinds as protobuf (`application/vnd.kubernetes.protobuf`);
//! one that answers JSON instead (a proxy) is read as JSON.
//!
//! The body is the magic `k8s\0` and a `runtime.Unknown` whose field 2 (`raw`) holds the
//! `NodeList`: field 1 its `ListMeta`, field 2 each `Node`. [`ProtoListSplitter`] hands out
//! the list's metadata and each Node's bytes one at a time, as [`super::list_split`] does
//! for JSON; [`node`] and [`resource_version`] read the few fields flannel needs (field
//! numbers from k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1).

use std::collections::BTreeMap;

use super::list_split::{NotAList, Piece};
use super::node::{NodeMeta, NodeObject, NodeSpec};

/// The content type of Kubernetes' protobuf encoding.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8; 4] = b"k8s\0";

/// A varint at the start of `b`: (value, its length); `None` when `b` ends inside it.
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate() {
        if i == 10 {
            return Err("a varint longer than 10 bytes".into());
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Ok(None)
}

/// One field's header at the start of `b`: (field number, wire type, the value's length when
/// it is length-delimited or fixed, header length); `None` when `b` ends inside the header.
type Header = (u64, u8, Option<u64>, usize);

fn header(b: &[u8]) -> Result<Option<Header>, String> {
    let Some((tag, n)) = varint(b)? else {
        return Ok(None);
    };
    let (field, wire) = (tag >> 3, (tag & 7) as u8);
    match wire {
        0 => Ok(Some((field, wire, None, n))),
        1 => Ok(Some((field, wire, Some(8), n))),
        5 => Ok(Some((field, wire, Some(4), n))),
        2 => match varint(&b[n..])? {
            Some((len, m)) => Ok(Some((field, wire, Some(len), n + m))),
            None => Ok(None),
        },
        w => Err(format!(
            "protobuf wire type {w} (field {field}) is not one this reads"
        )),
    }
}

/// The field starting `b`: (field number, wire type, its value's length, its header's
/// length); `None` when `b` ends before the value's length is known.
fn field_at(b: &[u8]) -> Result<Option<(u64, u8, u64, usize)>, String> {
    let Some((field, wire, len, n)) = header(b)? else {
        return Ok(None);
    };
    let value = match (wire, len) {
        (0, _) => match varint(&b[n..])? {
            Some((_, m)) => m as u64,
            None => return Ok(None),
        },
        (_, len) => len.unwrap_or(0),
    };
    Ok(Some((field, wire, value, n)))
}

/// The fields of a whole message `b`: (field number, the value's bytes) for length-delimited
/// ones; the others are skipped.
fn fields(b: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), String>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < b.len() {
            let (field, wire, len, n) = match header(&b[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    pos = b.len();
                    return Some(Err("a message ends inside a field's header".into()));
                }
                Err(e) => {
                    pos = b.len();
                    return Some(Err(e));
                }
            };
            pos += n;
            let len = match (wire, len) {
                (0, _) => match varint(&b[pos..]) {
                    Ok(Some((_, m))) => m,
                    _ => {
                        pos = b.len();
                        return Some(Err("a message ends inside a varint".into()));
                    }
                },
                (_, Some(len)) => usize::try_from(len).unwrap_or(usize::MAX),
                _ => 0,
            };
            if b.len() - pos < len {
                pos = b.len();
                return Some(Err("a field longer than its message".into()));
            }
            let value = &b[pos..pos + len];
            pos += len;
            if wire == 2 {
                return Some(Ok((field, value)));
            }
        }
        None
    })
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string that is not UTF-8".into())
}

/// A Node's name, flannel's annotations (those under `prefix`) and pod CIDRs.
pub(crate) fn node(b: &[u8], prefix: &str) -> Result<NodeObject, String> {
    let mut object = NodeObject {
        metadata: NodeMeta {
            name: String::new(),
            resource_version: String::new(),
            annotations: None,
        },
        spec: NodeSpec::default(),
    };
    for f in fields(b) {
        match f? {
            (1, meta) => {
                for f in fields(meta) {
                    match f? {
                        (1, name) => object.metadata.name = text(name)?,
                        (6, rv) => object.metadata.resource_version = text(rv)?,
                        (12, entry) => {
                            let (mut key, mut value) = (&[][..], &[][..]);
                            for f in fields(entry) {
                                match f? {
                                    (1, k) => key = k,
                                    (2, v) => value = v,
                                    _ => {}
                                }
                            }
                            if key.starts_with(prefix.as_bytes()) {
                                object
                                    .metadata
                                    .annotations
                                    .get_or_insert_with(BTreeMap::new)
                                    .insert(text(key)?, text(value)?);
                            }
                        }
                        _ => {}
                    }
                }
            }
            (2, spec) => {
                for f in fields(spec) {
                    match f? {
                        (1, cidr) => object.spec.pod_cidr = Some(text(cidr)?),
                        (7, cidr) => object
                            .spec
                            .pod_cidrs
                            .get_or_insert_with(Vec::new)
                            .push(text(cidr)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if object.metadata.name.is_empty() {
        return Err("a Node without a name".into());
    }
    Ok(object)
}

/// The `resourceVersion` of a list's `ListMeta`.
pub(crate) fn resource_version(b: &[u8]) -> Result<String, String> {
    for f in fields(b) {
        if let (2, rv) = f? {
            return text(rv);
        }
    }
    Ok(String::new())
}

/// A `Status` (an error's body in protobuf): its message, else its reason.
pub(crate) fn status_message(body: &[u8]) -> Option<String> {
    let raw = envelope_raw(body.strip_prefix(MAGIC)?)?;
    let (mut message, mut reason) = (None, None);
    for f in fields(raw) {
        match f.ok()? {
            (3, m) => message = text(m).ok(),
            (4, r) => reason = text(r).ok(),
            _ => {}
        }
    }
    message.filter(|m| !m.is_empty()).or(reason)
}

/// The `raw` field of a whole `runtime.Unknown`.
fn envelope_raw(b: &[u8]) -> Option<&[u8]> {
    fields(b)
        .filter_map(Result::ok)
        .find_map(|(field, value)| (field == 2).then_some(value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Magic,
    /// In the `runtime.Unknown`; `list_read` once its `raw` went by.
    Envelope {
        list_read: bool,
    },
    /// In the `NodeList`, with this many of its bytes still to come.
    List {
        left: u64,
    },
}

/// Splits a protobuf Node list as it arrives (see the module doc).
pub(crate) struct ProtoListSplitter {
    buf: Vec<u8>,
    stage: Stage,
    /// Bytes of a field that is not read, still to be skipped.
    skip: u64,
}

impl ProtoListSplitter {
    pub(crate) fn new() -> Self {
        ProtoListSplitter {
            buf: Vec::new(),
            stage: Stage::Magic,
            skip: 0,
        }
    }

    /// Feeds the next bytes of the body; `out` gets each piece completed in them.
    pub(crate) fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        out: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<NotAList>,
    {
        let bad = |m: String| E::from(NotAList(m));
        if self.skip > 0 {
            let n = chunk
                .len()
                .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            chunk = &chunk[n..];
            self.skip -= n as u64;
        }
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            match self.stage {
                Stage::Magic => {
                    if rest.len() < MAGIC.len() {
                        break;
                    }
                    if &rest[..4] != MAGIC {
                        return Err(bad("not Kubernetes' protobuf encoding".into()));
                    }
                    pos += 4;
                    self.stage = Stage::Envelope { list_read: false };
                }
                Stage::Envelope { list_read } => {
                    let Some((field, wire, value, n)) = field_at(rest).map_err(bad)? else {
                        break;
                    };
                    if field == 2 && wire == 2 && !list_read {
                        pos += n;
                        self.stage = Stage::List { left: value };
                        continue;
                    }
                    pos += n;
                    self.skip_bytes(&mut pos, value);
                }
                Stage::List { left: 0 } => self.stage = Stage::Envelope { list_read: true },
                Stage::List { left } => {
                    let Some((field, wire, value, n)) = field_at(rest).map_err(bad)? else {
                        break;
                    };
                    let whole = n as u64 + value;
                    if whole > left {
                        return Err(bad("a field longer than the list".into()));
                    }
                    if wire == 2 && (field == 1 || field == 2) {
                        let Ok(end) = usize::try_from(whole) else {
                            return Err(bad("a list item too large".into()));
                        };
                        if rest.len() < end {
                            break;
                        }
                        let value = &rest[n..end];
                        out(if field == 1 {
                            Piece::Metadata(value)
                        } else {
                            Piece::Item(value)
                        })?;
                        pos += end;
                    } else {
                        pos += n;
                        self.skip_bytes(&mut pos, value);
                    }
                    self.stage = Stage::List { left: left - whole };
                }
            }
            if self.skip > 0 {
                break;
            }
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// Skips `n` bytes from `pos`: those in the buffer now, the rest as they come.
    fn skip_bytes(&mut self, pos: &mut usize, n: u64) {
        let here = ((self.buf.len() - *pos) as u64).min(n);
        *pos += here as usize;
        self.skip = n - here;
    }

    /// Checks that the body held a whole list.
    pub(crate) fn finish(&self) -> Result<(), NotAList> {
        match self.stage {
            Stage::Envelope { list_read: true } if self.skip == 0 && self.buf.is_empty() => Ok(()),
            Stage::List { left: 0 } if self.skip == 0 && self.buf.is_empty() => Ok(()),
            _ => Err(NotAList(
                "the list ended early (the connection closed?)".into(),
            )),
        }
    }
}

/// Node lists as the API server encodes them, for the tests of this module and of the list
/// reader.
#[cfg(test)]
pub(super) mod samples {
    use super::MAGIC;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub fn bytes_field(field: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, field << 3 | 2);
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
        out
    }

    pub fn varint_field(field: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, field << 3);
        put_varint(&mut out, v);
        out
    }

    fn entry(k: &str, v: &str) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v.as_bytes())].concat()
    }

    /// A Node as the API server encodes it (fields flannel skips included).
    pub fn node_bytes(name: &str, cidr: &str) -> Vec<u8> {
        let meta = [
            bytes_field(1, name.as_bytes()),
            bytes_field(5, b"uid-1"),
            bytes_field(6, b"77"),
            varint_field(7, 3),
            bytes_field(11, &entry("kubernetes.io/hostname", name)),
            bytes_field(12, &entry("node.alpha.kubernetes.io/ttl", "0")),
            bytes_field(12, &entry("flannel.alpha.coreos.com/public-ip", "10.0.0.1")),
            bytes_field(12, &entry("flannel.alpha.coreos.com/backend-type", "vxlan")),
        ]
        .concat();
        let spec = [
            bytes_field(1, cidr.as_bytes()),
            bytes_field(3, b"provider://x"),
            bytes_field(7, cidr.as_bytes()),
            bytes_field(7, b"fd00::/64"),
        ]
        .concat();
        let status = bytes_field(9, &bytes_field(1, b"image@sha256:0000"));
        [
            bytes_field(1, &meta),
            bytes_field(2, &spec),
            bytes_field(3, &status),
        ]
        .concat()
    }

    pub fn list_body(nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut list = bytes_field(1, &bytes_field(2, b"4242"));
        for n in nodes {
            list.extend(bytes_field(2, n));
        }
        let envelope = [
            bytes_field(
                1,
                &[bytes_field(1, b"v1"), bytes_field(2, b"NodeList")].concat(),
            ),
            bytes_field(2, &list),
            bytes_field(3, b""),
            bytes_field(4, b""),
        ]
        .concat();
        [MAGIC.to_vec(), envelope].concat()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::samples::*;
    use super::*;

    fn split(body: &[u8], size: usize) -> Result<(String, Vec<NodeObject>), String> {
        let mut s = ProtoListSplitter::new();
        let (mut rv, mut nodes) = (String::new(), Vec::new());
        for chunk in body.chunks(size) {
            s.feed(chunk, &mut |p| -> Result<(), String> {
                match p {
                    Piece::Metadata(b) => rv = resource_version(b)?,
                    Piece::Item(b) => nodes.push(node(b, "flannel.alpha.coreos.com/")?),
                }
                Ok(())
            })?;
        }
        s.finish()?;
        Ok((rv, nodes))
    }

    #[test]
    fn each_node_and_the_resource_version_whatever_the_chunks() {
        let body = list_body(&[
            node_bytes("a", "10.1.0.0/24"),
            node_bytes("b", "10.1.1.0/24"),
        ]);
        for size in 1..=body.len() {
            let (rv, nodes) = split(&body, size).unwrap();
            assert_eq!(rv, "4242", "chunks of {size}");
            let names: Vec<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
            assert_eq!(names, ["a", "b"], "chunks of {size}");
        }
        let (_, nodes) = split(&body, 7).unwrap();
        let a = &nodes[0];
        assert_eq!(a.metadata.resource_version, "77");
        assert_eq!(a.spec.pod_cidr.as_deref(), Some("10.1.0.0/24"));
        assert_eq!(
            a.spec.pod_cidrs.as_deref(),
            Some(&["10.1.0.0/24".to_string(), "fd00::/64".to_string()][..])
        );
        let annotations = a.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [
                "flannel.alpha.coreos.com/backend-type",
                "flannel.alpha.coreos.com/public-ip"
            ]
        );
    }

    #[test]
    fn an_empty_list_and_a_node_without_annotations() {
        let (rv, nodes) = split(&list_body(&[]), 3).unwrap();
        assert_eq!((rv.as_str(), nodes.len()), ("4242", 0));
        let bare = bytes_field(1, &bytes_field(1, b"n"));
        let (_, nodes) = split(&list_body(&[bare]), 5).unwrap();
        assert!(nodes[0].metadata.annotations.is_none());
        assert!(nodes[0].spec.pod_cidrs.is_none());
    }

    #[test]
    fn cut_or_foreign_bodies_are_errors() {
        let body = list_body(&[node_bytes("a", "10.1.0.0/24")]);
        // (the last 4 bytes are the envelope's empty content encoding and type: optional)
        for cut in [4, 10, body.len() - 20, body.len() - 5] {
            assert!(split(&body[..cut], 3).is_err(), "cut at {cut}");
        }
        assert!(split(b"{\"kind\":\"NodeList\"}", 4).is_err());
        // a Node whose name claims 80 bytes and has 1
        let lying = bytes_field(1, &[0x0a, 80, b'x']);
        assert!(split(&list_body(&[lying]), 16).is_err());
    }

    #[test]
    fn a_protobuf_status_gives_its_message() {
        let status = [
            bytes_field(3, b"nodes is forbidden: User \"x\" cannot list resource"),
            bytes_field(4, b"Forbidden"),
            varint_field(6, 403),
        ]
        .concat();
        let body = [MAGIC.to_vec(), bytes_field(2, &status)].concat();
        assert_eq!(
            status_message(&body).unwrap(),
            "nodes is forbidden: User \"x\" cannot list resource"
        );
        assert_eq!(status_message(b"{}"), None);
    }
}
