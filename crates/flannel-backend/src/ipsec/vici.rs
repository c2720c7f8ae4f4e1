//! A client of strongSwan's VICI protocol (the `vici` plugin of charon, the interface
//! `swanctl` uses), as much as the ipsec backend needs: a request and its response over the
//! unix socket (`/var/run/charon.vici`). About 150 lines of our own rather than a crate:
//! the ones there are are young, blocking, or of another license.
//!
//! The wire: each packet is a 32-bit big-endian length, a type, for a request its command's
//! name (8-bit length), then a message: a sequence of key/values (8-bit name length, 16-bit
//! value length), lists of values and named sections, nested.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const CMD_REQUEST: u8 = 0;
const CMD_RESPONSE: u8 = 1;
const CMD_UNKNOWN: u8 = 2;

const SECTION_START: u8 = 1;
const SECTION_END: u8 = 2;
const KEY_VALUE: u8 = 3;
const LIST_START: u8 = 4;
const LIST_ITEM: u8 = 5;
const LIST_END: u8 = 6;

/// The longest a request may take (charon answers at once; a loaded conn starts its IKE
/// in the background).
const TIMEOUT: Duration = Duration::from_secs(10);

/// An element of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Section(Message),
}

/// A message: named elements, in order.
pub type Message = Vec<(String, Value)>;

/// `key = value`.
pub fn kv(key: &str, value: impl Into<String>) -> (String, Value) {
    (key.to_string(), Value::Str(value.into()))
}

/// `key = [values]`.
pub fn list(key: &str, values: &[&str]) -> (String, Value) {
    (
        key.to_string(),
        Value::List(values.iter().map(|v| v.to_string()).collect()),
    )
}

/// `key { … }`.
pub fn section(key: &str, body: Message) -> (String, Value) {
    (key.to_string(), Value::Section(body))
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), String> {
    let len = u8::try_from(name.len()).map_err(|_| format!("name {name:?} is too long"))?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_value(out: &mut Vec<u8>, value: &str) -> Result<(), String> {
    let len = u16::try_from(value.len()).map_err(|_| "a value is too long".to_string())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

/// The bytes of `message`.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), String> {
    for (name, value) in message {
        match value {
            Value::Str(v) => {
                out.push(KEY_VALUE);
                put_name(out, name)?;
                put_value(out, v)?;
            }
            Value::List(items) => {
                out.push(LIST_START);
                put_name(out, name)?;
                for v in items {
                    out.push(LIST_ITEM);
                    put_value(out, v)?;
                }
                out.push(LIST_END);
            }
            Value::Section(body) => {
                out.push(SECTION_START);
                put_name(out, name)?;
                encode(body, out)?;
                out.push(SECTION_END);
            }
        }
    }
    Ok(())
}

/// A message from bytes (charon's answers are input too: an error, never a panic).
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    let mut at = 0;
    let mut stack: Vec<(String, Message)> = vec![(String::new(), Vec::new())];
    let bad = || "a VICI message that does not parse".to_string();
    let name = |at: &mut usize| -> Result<String, String> {
        let len = usize::from(*bytes.get(*at).ok_or_else(bad)?);
        let s = bytes.get(*at + 1..*at + 1 + len).ok_or_else(bad)?;
        *at += 1 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    let value = |at: &mut usize| -> Result<String, String> {
        let len = bytes.get(*at..*at + 2).ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let s = bytes.get(*at + 2..*at + 2 + len).ok_or_else(bad)?;
        *at += 2 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    while at < bytes.len() {
        let kind = bytes[at];
        at += 1;
        match kind {
            KEY_VALUE => {
                let n = name(&mut at)?;
                let v = value(&mut at)?;
                stack.last_mut().ok_or_else(bad)?.1.push((n, Value::Str(v)));
            }
            LIST_START => {
                let n = name(&mut at)?;
                let mut items = Vec::new();
                loop {
                    match bytes.get(at) {
                        Some(&LIST_ITEM) => {
                            at += 1;
                            items.push(value(&mut at)?);
                        }
                        Some(&LIST_END) => {
                            at += 1;
                            break;
                        }
                        _ => return Err(bad()),
                    }
                }
                stack
                    .last_mut()
                    .ok_or_else(bad)?
                    .1
                    .push((n, Value::List(items)));
            }
            SECTION_START => {
                let n = name(&mut at)?;
                stack.push((n, Vec::new()));
            }
            SECTION_END => {
                if stack.len() < 2 {
                    return Err(bad());
                }
                let (n, body) = stack.pop().ok_or_else(bad)?;
                stack
                    .last_mut()
                    .ok_or_else(bad)?
                    .1
                    .push((n, Value::Section(body)));
            }
            _ => return Err(bad()),
        }
    }
    match stack.pop() {
        Some((_, message)) if stack.is_empty() => Ok(message),
        _ => Err(bad()),
    }
}

/// The value of `key` at the top of `message`.
pub fn get<'a>(message: &'a Message, key: &str) -> Option<&'a Value> {
    message.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Sends `command` with `message` to the charon at `socket`; its response, or why none.
/// A response with `success = no` is an error with charon's `errmsg`.
pub async fn call(socket: &Path, command: &str, message: &Message) -> Result<Message, String> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to charon at {}: {e}", socket.display()))?;
        let mut body = vec![CMD_REQUEST];
        put_name(&mut body, command)?;
        encode(message, &mut body)?;
        let mut packet = (body.len() as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        let io = |e: std::io::Error| format!("{command} to charon: {e}");
        stream.write_all(&packet).await.map_err(io)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > 1 << 20 {
            return Err(format!("{command} to charon: a packet of {len} bytes"));
        }
        let mut reply = vec![0u8; len];
        stream.read_exact(&mut reply).await.map_err(io)?;
        match reply[0] {
            CMD_RESPONSE => decode(&reply[1..]).map_err(|e| format!("{command}: {e}")),
            CMD_UNKNOWN => Err(format!("charon does not know the command {command}")),
            other => Err(format!(
                "{command}: charon answered with packet type {other}"
            )),
        }
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{command} to charon: no answer in {TIMEOUT:?}"))??;
    match get(&response, "success") {
        Some(Value::Str(s)) if s == "no" => {
            let why = match get(&response, "errmsg") {
                Some(Value::Str(m)) => m.clone(),
                _ => "no reason given".into(),
            };
            Err(format!("{command}: charon refused: {why}"))
        }
        _ => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_and_broken_bytes_are_an_error() {
        let message = vec![
            section(
                "conn",
                vec![
                    list("local_addrs", &["192.0.2.1"]),
                    kv("version", "2"),
                    section("children", vec![section("c", vec![kv("mode", "tunnel")])]),
                ],
            ),
            kv("success", "yes"),
        ];
        let mut bytes = Vec::new();
        encode(&message, &mut bytes).unwrap();
        assert_eq!(&bytes[..6], &[SECTION_START, 4, b'c', b'o', b'n', b'n']);
        assert_eq!(decode(&bytes).unwrap(), message);
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&[SECTION_END]).is_err());
        assert!(decode(&[9]).is_err());
    }
}
