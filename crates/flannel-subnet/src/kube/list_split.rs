//! A Kubernetes list's JSON split as it arrives, so that the whole list is never held.
//!
//! A list (`{"kind":"NodeList","metadata":{…},"items":[{…},{…}]}`) read from the API
//! server's watch cache comes as one response: 25 MiB of JSON for 5 000 kubelet-sized Nodes.
//! [`ListSplitter`] is fed the body chunk by chunk and hands out the list's `metadata` and
//! each element of `items` as the bytes of one JSON value, one at a time; each is decoded
//! (keeping the few fields flannel needs) and its bytes dropped before the next arrives. It
//! only tracks nesting and strings; the values themselves are checked by their decoder.

/// One value of the list, as its JSON bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// The list's `metadata` object.
    Metadata(&'a [u8]),
    /// One element of `items`.
    Item(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Collecting {
    #[default]
    Nothing,
    Metadata,
    Item,
}

#[derive(Debug, Default)]
pub(crate) struct ListSplitter {
    /// How many objects and arrays are open.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The key being read at depth 1, and whether it is being read.
    key: Vec<u8>,
    reading_key: bool,
    /// The last key read at depth 1: whose value the depth-2 value is.
    top_key: Vec<u8>,
    collecting: Collecting,
    buf: Vec<u8>,
    /// Whether the list's closing brace went by.
    ended: bool,
}

/// A body that is not a list's JSON.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotAList(pub String);

impl ListSplitter {
    pub(crate) fn new() -> Self {
        ListSplitter::default()
    }

    /// Feeds the next bytes of the body; `out` gets each piece completed in them.
    pub(crate) fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<NotAList>,
    {
        for &b in chunk {
            let collecting = self.collecting;
            if collecting != Collecting::Nothing {
                self.buf.push(b);
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.reading_key {
                        self.reading_key = false;
                        self.top_key = std::mem::take(&mut self.key);
                    }
                } else if self.reading_key {
                    self.key.push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.expect_key = false;
                        self.reading_key = true;
                        self.key.clear();
                    }
                }
                b'{' | b'[' => {
                    if self.ended {
                        return Err(NotAList("more after the list's end".into()).into());
                    }
                    self.depth += 1;
                    match (self.depth, b) {
                        (1, b'{') => self.expect_key = true,
                        (1, _) => return Err(NotAList("not a JSON object".into()).into()),
                        (2, b'{') if self.top_key == b"metadata" => {
                            self.start(Collecting::Metadata, b)
                        }
                        (3, b'{') if self.top_key == b"items" => self.start(Collecting::Item, b),
                        _ => {}
                    }
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(NotAList(format!("unexpected {:?}", b as char)).into());
                    }
                    let closes = match collecting {
                        Collecting::Metadata => self.depth == 2,
                        Collecting::Item => self.depth == 3,
                        Collecting::Nothing => false,
                    };
                    self.depth -= 1;
                    if closes {
                        self.collecting = Collecting::Nothing;
                        let piece = match collecting {
                            Collecting::Metadata => Piece::Metadata(&self.buf),
                            _ => Piece::Item(&self.buf),
                        };
                        out(piece)?;
                        self.buf.clear();
                    }
                    if self.depth == 0 {
                        self.ended = true;
                    }
                }
                b',' if self.depth == 1 => self.expect_key = true,
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ if self.depth == 0 => {
                    return Err(NotAList("not a JSON object".into()).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn start(&mut self, what: Collecting, first: u8) {
        self.collecting = what;
        self.buf.clear();
        self.buf.push(first);
    }

    /// Checks that the body ended with the list's end.
    pub(crate) fn finish(&self) -> Result<(), NotAList> {
        if self.ended {
            Ok(())
        } else {
            Err(NotAList(
                "the list ended early (the connection closed?)".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Metadata(String),
        Item(String),
    }

    /// The pieces of `body` fed in chunks of `size` bytes.
    fn split(body: &str, size: usize) -> Result<Vec<Got>, String> {
        let mut s = ListSplitter::new();
        let mut got = Vec::new();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            s.feed(chunk, &mut |p| -> Result<(), String> {
                got.push(match p {
                    Piece::Metadata(b) => Got::Metadata(String::from_utf8(b.to_vec()).unwrap()),
                    Piece::Item(b) => Got::Item(String::from_utf8(b.to_vec()).unwrap()),
                });
                Ok(())
            })?;
        }
        s.finish()?;
        Ok(got)
    }

    const LIST: &str = r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"42"},
        "items":[{"metadata":{"name":"a","annotations":{"x":"}]\"{["}},"spec":{}},
                 {"metadata":{"name":"b\\"},"status":{"images":[{"names":["n"]}]}}]}"#;

    #[test]
    fn metadata_and_each_item_whatever_the_chunks() {
        let want = vec![
            Got::Metadata(r#"{"resourceVersion":"42"}"#.into()),
            Got::Item(r#"{"metadata":{"name":"a","annotations":{"x":"}]\"{["}},"spec":{}}"#.into()),
            Got::Item(
                r#"{"metadata":{"name":"b\\"},"status":{"images":[{"names":["n"]}]}}"#.into(),
            ),
        ];
        for size in 1..=LIST.len() {
            assert_eq!(split(LIST, size).unwrap(), want, "chunks of {size}");
        }
    }

    #[test]
    fn keys_named_like_the_list_fields_deeper_down_are_not_the_list_fields() {
        let body =
            r#"{"kind":"X","x":{"metadata":{"a":1},"items":[{"b":2}]},"items":[],"metadata":{}}"#;
        assert_eq!(split(body, 7).unwrap(), vec![Got::Metadata("{}".into())]);
    }

    #[test]
    fn a_value_named_items_is_not_a_key() {
        let body = r#"{"kind":"items","items":[{"n":1}],"metadata":{"resourceVersion":"1"}}"#;
        assert_eq!(
            split(body, 3).unwrap(),
            vec![
                Got::Item(r#"{"n":1}"#.into()),
                Got::Metadata(r#"{"resourceVersion":"1"}"#.into())
            ]
        );
    }

    #[test]
    fn an_empty_list() {
        let body = r#"{"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":null}"#;
        assert_eq!(
            split(body, 5).unwrap(),
            vec![Got::Metadata(r#"{"resourceVersion":"9"}"#.into())]
        );
    }

    #[test]
    fn a_cut_body_or_no_list_is_an_error() {
        assert!(split(&LIST[..LIST.len() - 3], 10).is_err());
        assert!(split("[1,2]", 1).is_err());
        assert!(split("<html>", 1).is_err());
        assert!(split("", 1).is_err());
        assert!(split(r#"{"items":[]}{}"#, 4).is_err());
    }
}
