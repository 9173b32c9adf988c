//! Fuzz target: kechictl's side of the control protocol: reading kechid's NUL-terminated reply
//! (`kechi::control::read_message_blocking`, as `control::request` does) and decoding its
//! parameters into the status and recycle replies kechictl prints.
//!
//! Input: byte 0 sets how many bytes each read returns (1..=256), the rest is what kechid
//! sent.
//!
//! Contract checked: no panic (decoding and the figures kechictl derives for its table); the
//! framing gives the same result however the bytes are split; a decoded reply, status or
//! recycle reply encodes back to a message that decodes again, to the same value where no
//! floating-point number is involved (serde_json's default float parsing is best-effort, so
//! `shared_percent` may come back one bit off: irrelevant to a figure shown as `{:.0}%`).
#![no_main]

use std::io::Read;
use std::time::Duration;

use kechi::control::{self, ProtocolError, RecycleReply, Reply, Status};
use kechi::quantity::{Bytes, format_duration};
use libfuzzer_sys::fuzz_target;

/// A connection that hands out its bytes `step` at a time.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(self.data.len()).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn outcome(r: &Result<Reply, ProtocolError>) -> Result<Reply, &'static str> {
    match r {
        Ok(rep) => Ok(rep.clone()),
        Err(ProtocolError::TooLarge) => Err("too large"),
        Err(ProtocolError::Truncated) => Err("truncated"),
        Err(ProtocolError::Malformed(_)) => Err("malformed"),
        Err(ProtocolError::Io(_)) => Err("io"),
    }
}

/// Encodes `v`, checks the framing, decodes it again.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    let wire = control::encode(v);
    assert_eq!(wire.iter().position(|b| *b == 0), Some(wire.len() - 1));
    control::decode(&wire[..wire.len() - 1]).expect("re-decodes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, sent)) = data.split_first() else {
        return;
    };
    let mut conn = Chunked {
        data: sent,
        step: usize::from(step) + 1,
    };
    let got = control::read_message_blocking::<_, Reply>(&mut conn);
    let expected = match sent.iter().position(|b| *b == 0) {
        Some(end) => control::decode::<Reply>(&sent[..end]),
        None => Err(ProtocolError::Truncated),
    };
    assert_eq!(outcome(&got), outcome(&expected), "framing of {sent:?}");
    let Ok(reply) = got else {
        return;
    };
    assert_eq!(round_trip(&reply).error, reply.error);

    // What kechictl does with it.
    if reply.error.is_some() {
        let _ = reply.parameters.get("message").and_then(|m| m.as_str());
        return;
    }
    if let Ok(st) = serde_json::from_value::<Status>(reply.parameters.clone()) {
        let back = round_trip(&st);
        assert_eq!(
            (&back.app, &back.summary, &back.events, &back.listening),
            (&st.app, &st.summary, &st.events, &st.listening)
        );
        assert_eq!(back.workers.len(), st.workers.len());
        for w in &st.workers {
            let _ = format_duration(Duration::from_secs(w.age_secs));
            for b in [w.memory_bytes, w.tmpdir_bytes].into_iter().flatten() {
                let _ = Bytes(b).human();
            }
            if let Some(m) = &w.memory {
                for b in [m.rss, m.pss, m.uss, m.swap] {
                    let _ = Bytes(b).human();
                }
                let _ = m.shared_percent.map(|p| format!("{p:.0}%"));
            }
        }
        for e in &st.events {
            let _ = e
                .split_once(' ')
                .and_then(|(t, what)| Some((t.parse::<u64>().ok()?, what)));
        }
    }
    if let Ok(r) = serde_json::from_value::<RecycleReply>(reply.parameters.clone()) {
        assert_eq!(round_trip(&r), r);
    }
});
