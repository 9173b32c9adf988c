//! The SASL handshake that opens a D-Bus connection, with the `EXTERNAL` mechanism only: the
//! server knows who we are from the socket's peer credentials, we only name our uid.
//!
//! The lines are pure ([`auth_line`], [`parse_reply`]); [`handshake`] does the IO, reading the
//! server's one reply line byte by byte so that nothing after it is consumed (the server sends
//! nothing more before `BEGIN`, but the message stream must start exactly after it).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::Error;

/// The longest reply line accepted (`OK` and a 32-digit guid fit many times over).
const MAX_LINE: usize = 512;

/// The NUL byte every client sends first, then `AUTH EXTERNAL <uid in hex of its decimal
/// digits>`.
pub fn auth_line(uid: u32) -> Vec<u8> {
    let mut line = b"\0AUTH EXTERNAL ".to_vec();
    for d in uid.to_string().bytes() {
        line.extend_from_slice(format!("{d:02x}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    line
}

/// The server's answer to `AUTH`: `OK <guid>` lets us in, anything else refuses.
pub fn parse_reply(line: &[u8]) -> Result<(), Error> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    if line == b"OK" || line.starts_with(b"OK ") {
        return Ok(());
    }
    Err(Error::Auth(String::from_utf8_lossy(line).into_owned()))
}

/// Authenticates as `uid` and sends `BEGIN`; the stream then carries messages.
pub async fn handshake(stream: &mut UnixStream, uid: u32) -> Result<(), Error> {
    stream.write_all(&auth_line(uid)).await?;
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_LINE {
            return Err(Error::Auth("reply line too long".into()));
        }
        let mut b = [0u8];
        if stream.read(&mut b).await? == 0 {
            return Err(Error::Auth(
                "connection closed during authentication".into(),
            ));
        }
        line.push(b[0]);
    }
    parse_reply(&line)?;
    stream.write_all(b"BEGIN\r\n").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_line_hex_encodes_the_decimal_uid() {
        assert_eq!(auth_line(0), b"\0AUTH EXTERNAL 30\r\n");
        assert_eq!(auth_line(1000), b"\0AUTH EXTERNAL 31303030\r\n");
    }

    #[test]
    fn replies() {
        assert!(parse_reply(b"OK 1234deadbeef\r\n").is_ok());
        assert!(parse_reply(b"OK\r\n").is_ok());
        let err = parse_reply(b"REJECTED EXTERNAL\r\n").unwrap_err();
        assert!(err.to_string().contains("REJECTED EXTERNAL"), "{err}");
        assert!(parse_reply(b"OKAY\r\n").is_err());
    }
}
