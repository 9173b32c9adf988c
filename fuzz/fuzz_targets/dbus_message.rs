//! Fuzz target: what kechid reads from its D-Bus socket (`kechi::dbus::wire`): the framing of a
//! message from its first 16 bytes, then the whole message, and values of any signature.
//!
//! Contract checked, for any bytes: no panic (every read bounds-checked, nesting bounded); a
//! message decodes only when its announced length is exactly what was given; a decoded message
//! re-encodes (little-endian) and decodes again to itself; the header alone decodes whenever
//! the whole message does. Byte 0 picks between a whole message and a signature + values.
#![no_main]

use kechi::dbus::wire::{Message, decode_values, encode_values, message_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        let Ok(m) = Message::decode(rest) else {
            return;
        };
        assert_eq!(message_len(rest).ok(), Some(rest.len()));
        assert!(Message::decode_header(rest).is_ok());
        if m.body.iter().any(|v| format!("{v:?}").contains("NaN")) {
            return; // NaN != NaN: equality cannot be checked.
        }
        let again = m.encode().expect("a decoded message encodes");
        let back = Message::decode(&again).expect("a re-encoded message decodes");
        // Header fields kechi does not keep (fds, unknown codes) are not re-sent.
        assert_eq!(back, m);
    } else {
        // The first byte of `rest` is the signature's length, as on the wire.
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let Some(sig) = rest.get(..usize::from(n)) else {
            return;
        };
        let Ok(sig) = std::str::from_utf8(sig) else {
            return;
        };
        let body = &rest[usize::from(n)..];
        if let Ok(values) = decode_values(sig, body) {
            if format!("{values:?}").contains("NaN") {
                return;
            }
            let again = encode_values(&values).expect("decoded values encode");
            assert_eq!(again, body, "values of {sig:?} re-encode to other bytes");
        }
    }
});
