//! Writing responses: status lines, the `Date` header, request ids and the
//! gateway's own JSON error bodies. Everything writes into a reused `Vec<u8>`
//! so a keep-alive connection allocates nothing per response.

use std::time::{SystemTime, UNIX_EPOCH};

/// The header that carries the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Appends a decimal number without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Writes an IP address as text: every proxied request writes its
/// client's address into X-Forwarded-For, the same way the access log does
/// (`accesslog::format`, IPv4 without the formatting machinery).
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    crate::accesslog::format::ip(ip, out)
}

pub fn push_hex(out: &mut Vec<u8>, n: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..width).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}

/// `HTTP/1.1 404 Not Found\r\n`
pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(super::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once a second.
pub struct DateCache {
    secs: u64,
    text: [u8; 29],
}

impl Default for DateCache {
    fn default() -> Self {
        let mut d = DateCache {
            secs: u64::MAX,
            text: [b' '; 29],
        };
        d.refresh();
        d
    }
}

impl DateCache {
    /// The current date, reformatted only when the second has changed.
    pub fn get(&mut self) -> &[u8; 29] {
        self.refresh();
        &self.text
    }

    fn refresh(&mut self) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if secs != self.secs {
            self.secs = secs;
            self.text = format_http_date(secs);
        }
    }
}

/// Formats seconds since the epoch as an IMF-fixdate.
pub fn format_http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mo <= 2 { 1 } else { 0 };
    let mut out = [0u8; 29];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3] = b',';
    out[4] = b' ';
    let two = |v: i64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out[5..7].copy_from_slice(&two(d));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(mo - 1) as usize]);
    out[11] = b' ';
    let y = y.clamp(0, 9999);
    out[12..14].copy_from_slice(&two(y / 100));
    out[14..16].copy_from_slice(&two(y % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(h as i64));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(m as i64));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(s as i64));
    out[25..29].copy_from_slice(b" GMT");
    out
}

/// Request ids: 32 hex digits, unique per process run and shard without any
/// coordination: a per-shard random prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    /// `prefix` in hex, written once.
    prefix_hex: [u8; 16],
    counter: u64,
}

impl RequestIds {
    pub fn new(shard: usize) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mixed = splitmix(nanos ^ ((shard as u64) << 56) ^ (std::process::id() as u64) << 20);
        RequestIds {
            prefix: mixed,
            prefix_hex: hex16(mixed),
            counter: 0,
        }
    }

    /// The next id: 32 lower-case hex digits.
    pub fn next_id(&mut self) -> [u8; 32] {
        self.counter = self.counter.wrapping_add(1);
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&self.prefix_hex);
        out[16..].copy_from_slice(&hex16(splitmix(self.counter ^ self.prefix)));
        out
    }
}

/// `n` as 16 lower-case hex digits, most significant first, computed in
/// registers: one nibble spread into each byte, then each byte offset to
/// its digit ('0'..'9' or 'a'..'f') all at once.
fn hex16(n: u64) -> [u8; 16] {
    fn spread(x: u32) -> u64 {
        let x = u64::from(x);
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    }
    fn digits(v: u64) -> u64 {
        // 1 in each byte whose nibble is 10 or more: v + 6 reaches 16.
        let letter = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        v + 0x3030_3030_3030_3030 + letter * (b'a' - b'0' - 10) as u64
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(spread((n >> 32) as u32)).to_be_bytes());
    out[8..].copy_from_slice(&digits(spread(n as u32)).to_be_bytes());
    out
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends `{"message":"..."}` with JSON string escaping.
pub fn push_json_message(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"message\":\"");
    for &b in message.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                push_hex(out, b as u64, 2);
            }
            _ => out.push(b),
        }
    }
    out.extend_from_slice(b"\"}");
}

/// The length [`push_json_message`] will write.
pub fn json_message_len(message: &str) -> usize {
    14 + message
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_matches_display_for_v4_and_v6() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            // A literal of this test, not client input.
            let parsed: std::net::IpAddr = ip.parse().expect("test literal");
            let mut out = b"x=".to_vec();
            push_ip(&mut out, parsed);
            assert_eq!(out, format!("x={parsed}").into_bytes(), "{ip}");
        }
    }

    #[test]
    fn hex16_matches_format() {
        let mut n = 0x0123_4567_89ab_cdefu64;
        for _ in 0..10_000 {
            assert_eq!(hex16(n), format!("{n:016x}").as_bytes());
            n = splitmix(n);
        }
        for n in [0, u64::MAX, 0xa, 0xf0, 0x9999_9999_9999_9999] {
            assert_eq!(hex16(n), format!("{n:016x}").as_bytes());
        }
    }

    #[test]
    fn push_ip_matches_display_for_every_octet_value() {
        for o in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(o, 0, 9, 255),
                std::net::Ipv4Addr::new(10, o, 99, 100),
                std::net::Ipv4Addr::new(1, 2, o, o),
            ] {
                let mut out = Vec::new();
                push_ip(&mut out, ip.into());
                assert_eq!(out, ip.to_string().into_bytes());
            }
        }
    }

    #[test]
    fn http_date_matches_rfc_example() {
        // RFC 9110 §5.6.7: Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        // a leap day
        assert_eq!(
            &format_http_date(951_782_400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn json_message_escapes_quotes_and_controls() {
        let mut out = Vec::new();
        push_json_message(&mut out, "a\"b\\c\n");
        assert_eq!(out, b"{\"message\":\"a\\\"b\\\\c\\u000a\"}");
    }

    #[test]
    fn request_ids_are_32_hex_and_distinct() {
        let mut ids = RequestIds::new(0);
        let (a, b) = (ids.next_id(), ids.next_id());
        assert_eq!(a.len(), 32);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
