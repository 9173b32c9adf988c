//! Fuzz target: kechid's side of the control protocol: reading one NUL-terminated request from
//! a connection (`kechi::control::read_message`, as `control_server` does) and the error reply
//! it sends back for a bad one.
//!
//! Input: byte 0 sets how many bytes each read returns (1..=256), the rest is what the client
//! sent, so messages arrive split at every possible place.
//!
//! Contract checked: no panic; the framing gives the same result however the bytes are split
//! (the body before the first NUL, decoded; `Truncated` without a NUL); a decoded request
//! encodes to one NUL-terminated message that decodes to the same request; the error reply to
//! a bad request is itself a well-formed reply.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use kechi::control::{self, ProtocolError, Reply, Request};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A connection that hands out its bytes `step` at a time.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// The outcome, comparable: the request, or the kind of failure.
fn outcome(r: &Result<Request, ProtocolError>) -> Result<Request, &'static str> {
    match r {
        Ok(req) => Ok(req.clone()),
        Err(ProtocolError::TooLarge) => Err("too large"),
        Err(ProtocolError::Truncated) => Err("truncated"),
        Err(ProtocolError::Malformed(_)) => Err("malformed"),
        Err(ProtocolError::Io(_)) => Err("io"),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, sent)) = data.split_first() else {
        return;
    };
    let mut conn = Chunked {
        data: sent,
        step: usize::from(step) + 1,
    };
    let got = runtime().block_on(control::read_message::<_, Request>(&mut conn));

    let expected = match sent.iter().position(|b| *b == 0) {
        Some(end) => control::decode::<Request>(&sent[..end]),
        None => Err(ProtocolError::Truncated),
    };
    assert_eq!(outcome(&got), outcome(&expected), "framing of {sent:?}");

    match got {
        Ok(req) => {
            let wire = control::encode(&req);
            assert_eq!(wire.iter().position(|b| *b == 0), Some(wire.len() - 1));
            let back = control::decode::<Request>(&wire[..wire.len() - 1]).expect("re-decodes");
            assert_eq!(back, req);
        }
        Err(e) => {
            let reply = Reply::error("InvalidRequest", e.to_string());
            let wire = control::encode(&reply);
            assert_eq!(wire.iter().position(|b| *b == 0), Some(wire.len() - 1));
            let back = control::decode::<Reply>(&wire[..wire.len() - 1]).expect("re-decodes");
            assert_eq!(back, reply);
        }
    }
});
