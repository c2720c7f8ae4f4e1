//! The validity dates of an X.509 certificate (DER), read locally.
//!
//! Trust is decided by rustls during the handshake; this only lets start-up name an expired
//! or not-yet-valid client certificate or CA clearly, instead of leaving the operator with
//! whatever TLS alert (or closed connection) etcd answers with. A file this cannot read is
//! left to rustls: nothing here refuses a certificate rustls would accept.

use std::time::SystemTime;

/// `notBefore` and `notAfter` of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Why the certificate is not valid at `now`, in words for a log line; `None` when it is.
    pub fn problem_at(&self, now: SystemTime) -> Option<String> {
        if now > self.not_after {
            Some(format!(
                "expired on {}",
                crate::time::format_utc(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "is not valid before {}",
                crate::time::format_utc(self.not_before)
            ))
        } else {
            None
        }
    }
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }
pub fn of_der(der: &[u8]) -> Option<Validity> {
    let (cert, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(cert, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs, VERSION)?.1;
    }
    let (_, rest) = element(tbs, INTEGER)?; // serialNumber
    let (_, rest) = element(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = element(rest, SEQUENCE)?; // issuer
    let (validity, _) = element(rest, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;

/// One DER element with the tag `tag` at the start of `input`: (its contents, what follows).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049 as RFC 5280 says) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn time(input: &[u8]) -> Option<(SystemTime, &[u8])> {
    let (tag, year_digits) = match *input.first()? {
        UTC_TIME => (UTC_TIME, 2),
        GENERALIZED_TIME => (GENERALIZED_TIME, 4),
        _ => return None,
    };
    let (body, rest) = element(input, tag)?;
    if body.len() != year_digits + 11 || body.last() != Some(&b'Z') {
        return None;
    }
    let digits = &body[..body.len() - 1];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |from: usize, len: usize| {
        digits[from..from + len]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
    };
    let year = match year_digits {
        2 => match num(0, 2) {
            y @ 0..=49 => 2000 + y,
            y => 1900 + y,
        },
        _ => num(0, 4),
    };
    let at = year_digits;
    let t = crate::time::from_utc(
        i64::from(year),
        num(at, 2),
        num(at + 2, 2),
        num(at + 4, 2),
        num(at + 6, 2),
        num(at + 8, 2),
    )?;
    Some((t, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A minimal certificate shape: SEQUENCE { SEQUENCE { [0]{INTEGER 2}, INTEGER 1,
    /// SEQUENCE{}, SEQUENCE{}, SEQUENCE { times } } }.
    fn cert_with(times: &[u8]) -> Vec<u8> {
        let mut tbs = vec![0xa0, 3, 0x02, 1, 2, 0x02, 1, 1, 0x30, 0, 0x30, 0];
        tbs.push(0x30);
        tbs.push(times.len() as u8);
        tbs.extend_from_slice(times);
        let mut cert = vec![0x30, 0x81, tbs.len() as u8 + 2, 0x30, tbs.len() as u8];
        cert.extend(tbs);
        cert
    }

    fn utc(s: &str) -> Vec<u8> {
        let mut v = vec![UTC_TIME, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn generalized(s: &str) -> Vec<u8> {
        let mut v = vec![GENERALIZED_TIME, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let mut times = utc("200101000000Z");
        times.extend(generalized("20510101000000Z"));
        let v = of_der(&cert_with(&times)).unwrap();
        assert_eq!(v.not_before, at(1_577_836_800));
        assert_eq!(v.not_after, at(2_556_144_000));
        // UTCTime years 50-99 are 1950-1999: before the epoch, which we do not represent
        let mut old = utc("500101000000Z");
        old.extend(utc("210101000000Z"));
        assert_eq!(of_der(&cert_with(&old)), None);
    }

    #[test]
    fn reads_a_real_certificate() {
        // made by `openssl req -x509 -days 3650 -outform DER`, also a fuzz seed
        let der = include_bytes!("../../../tests/fuzz/corpus/cert_validity/ec-selfsigned.der");
        let v = of_der(der).unwrap();
        assert_eq!(
            v.not_after.duration_since(v.not_before).unwrap(),
            Duration::from_secs(3650 * 86_400)
        );
        assert!(v.not_before > at(1_795_000_000));
    }

    #[test]
    fn names_the_problem() {
        let v = Validity {
            not_before: at(1_577_836_800),
            not_after: at(1_609_459_200),
        };
        assert_eq!(
            v.problem_at(at(1_795_616_281)).as_deref(),
            Some("expired on 2021-01-01T00:00:00Z")
        );
        assert_eq!(
            v.problem_at(at(1_000_000_000)).as_deref(),
            Some("is not valid before 2020-01-01T00:00:00Z")
        );
        assert_eq!(v.problem_at(at(1_600_000_000)), None);
    }

    #[test]
    fn garbage_is_not_understood_and_never_panics() {
        assert_eq!(of_der(&[]), None);
        assert_eq!(of_der(&[0x30]), None);
        assert_eq!(of_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(of_der(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        let mut times = utc("2001010000Z"); // too short
        times.extend(utc("210101000000Z"));
        assert_eq!(of_der(&cert_with(&times)), None);
        let mut times = utc("20010100000xZ");
        times.extend(utc("210101000000Z"));
        assert_eq!(of_der(&cert_with(&times)), None);
        let good = {
            let mut t = utc("200101000000Z");
            t.extend(utc("210101000000Z"));
            cert_with(&t)
        };
        for cut in 0..good.len() {
            let _ = of_der(&good[..cut]);
        }
    }
}
