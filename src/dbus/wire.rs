//! The D-Bus wire format: values, signatures and whole messages, encoded and decoded in memory.
//!
//! Pure: no IO. Encoding writes little-endian messages; decoding reads either byte order.
//! Decoding takes bytes from a socket, so it trusts nothing: every read is bounds-checked,
//! padding must be zero, strings must be UTF-8 without NUL, signatures and object paths must be
//! well-formed, arrays and messages are held to the specification's limits (64 MiB, 128 MiB),
//! and nesting (arrays, structs, dict entries and variants together) to 64 levels, so neither a
//! panic nor unbounded recursion can come from any input. Every decoded value consumes at least
//! one byte of input, so what decoding allocates is bounded by a fixed multiple of the
//! message's size (a [`Value`] per byte at most); the connection decodes only the messages it
//! wants.

/// The largest message the specification allows (2^27 bytes).
pub const MAX_MESSAGE: usize = 1 << 27;
/// The largest array, in bytes (2^26).
pub const MAX_ARRAY: usize = 1 << 26;
/// How deep containers (arrays, structs, dict entries, variants) may nest within one value.
const MAX_DEPTH: u32 = 64;
/// The fixed part of a message header, before its field array.
pub const FIXED_HEADER: usize = 16;

/// A D-Bus value. Arrays carry their element signature, so an empty one still has a type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    /// An object path (`o`).
    Path(String),
    /// A signature (`g`).
    Sig(String),
    /// A unix fd index (`h`); kechi passes no fds, but may be sent one.
    Fd(u32),
    /// The element signature, then the elements.
    Array(String, Vec<Value>),
    Struct(Vec<Value>),
    /// `{kv}`, only inside an array (`a{kv}`).
    DictEntry(Box<Value>, Box<Value>),
    Variant(Box<Value>),
}

/// Why bytes are not a valid message (or a value cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed D-Bus message: {0}")]
pub struct WireError(pub &'static str);

type Result<T> = std::result::Result<T, WireError>;

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// `as` of these strings.
    pub fn strs(items: &[&str]) -> Value {
        Value::Array("s".into(), items.iter().map(|s| Value::str(*s)).collect())
    }

    /// Appends this value's signature to `out`.
    pub fn write_signature(&self, out: &mut String) {
        match self {
            Value::Array(elem, _) => {
                out.push('a');
                out.push_str(elem);
            }
            Value::Struct(fields) => {
                out.push('(');
                fields.iter().for_each(|f| f.write_signature(out));
                out.push(')');
            }
            Value::DictEntry(k, v) => {
                out.push('{');
                k.write_signature(out);
                v.write_signature(out);
                out.push('}');
            }
            other => out.push(other.code() as char),
        }
    }

    pub fn signature(&self) -> String {
        let mut s = String::new();
        self.write_signature(&mut s);
        s
    }

    fn code(&self) -> u8 {
        match self {
            Value::Byte(_) => b'y',
            Value::Bool(_) => b'b',
            Value::I16(_) => b'n',
            Value::U16(_) => b'q',
            Value::I32(_) => b'i',
            Value::U32(_) => b'u',
            Value::I64(_) => b'x',
            Value::U64(_) => b't',
            Value::F64(_) => b'd',
            Value::Str(_) => b's',
            Value::Path(_) => b'o',
            Value::Sig(_) => b'g',
            Value::Fd(_) => b'h',
            Value::Array(..) => b'a',
            Value::Struct(_) => b'(',
            Value::DictEntry(..) => b'{',
            Value::Variant(_) => b'v',
        }
    }

    // Accessors for reading replies: `None` when the value is of another type.

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Sig(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::U32(n) => Some(*n),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    /// The fields of a struct.
    pub fn as_struct(&self) -> Option<&[Value]> {
        match self {
            Value::Struct(fields) => Some(fields),
            _ => None,
        }
    }

    /// What a variant holds (the value itself when it is not a variant).
    pub fn unwrap_variant(&self) -> &Value {
        match self {
            Value::Variant(v) => v.unwrap_variant(),
            other => other,
        }
    }
}

fn is_basic(c: u8) -> bool {
    b"ybnqiuxtdsogh".contains(&c)
}

/// The alignment of a type, by its first signature character.
fn alignment(c: u8) -> usize {
    match c {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// The end of the single complete type that starts at `i` in `sig`.
fn one_type(sig: &[u8], i: usize, arrays: u32, structs: u32) -> Result<usize> {
    let Some(&c) = sig.get(i) else {
        return Err(WireError("signature ends inside a type"));
    };
    match c {
        c if is_basic(c) || c == b'v' => Ok(i + 1),
        b'a' => {
            if arrays >= 32 {
                return Err(WireError("arrays nested too deep"));
            }
            if sig.get(i + 1) == Some(&b'{') {
                if structs >= 32 {
                    return Err(WireError("structs nested too deep"));
                }
                match sig.get(i + 2) {
                    Some(&k) if is_basic(k) => {}
                    _ => return Err(WireError("dict key is not a basic type")),
                }
                let j = one_type(sig, i + 3, arrays + 1, structs + 1)?;
                if sig.get(j) != Some(&b'}') {
                    return Err(WireError("dict entry without exactly two types"));
                }
                Ok(j + 1)
            } else {
                one_type(sig, i + 1, arrays + 1, structs)
            }
        }
        b'(' => {
            if structs >= 32 {
                return Err(WireError("structs nested too deep"));
            }
            let mut j = i + 1;
            if sig.get(j) == Some(&b')') {
                return Err(WireError("empty struct"));
            }
            while sig.get(j) != Some(&b')') {
                j = one_type(sig, j, arrays, structs + 1)?;
            }
            Ok(j + 1)
        }
        _ => Err(WireError("bad type code in signature")),
    }
}

/// Checks a signature (any number of complete types, at most 255 bytes).
pub fn validate_signature(sig: &[u8]) -> Result<()> {
    if sig.len() > 255 {
        return Err(WireError("signature longer than 255"));
    }
    let mut i = 0;
    while i < sig.len() {
        i = one_type(sig, i, 0, 0)?;
    }
    Ok(())
}

/// Checks an object path: `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`.
pub fn validate_path(p: &str) -> Result<()> {
    let b = p.as_bytes();
    let ok = b == b"/"
        || (b.first() == Some(&b'/')
            && b[1..].split(|c| *c == b'/').all(|e| {
                !e.is_empty() && e.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
            }));
    if ok {
        Ok(())
    } else {
        Err(WireError("bad object path"))
    }
}

// ---- encoding ----------------------------------------------------------------------------------

/// Appends values to a message buffer; alignment is relative to the buffer's start, which is
/// the message's start.
struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    fn pad(&mut self, a: usize) {
        while self.buf.len() % a != 0 {
            self.buf.push(0);
        }
    }

    fn u32(&mut self, n: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<()> {
        if s.contains('\0') {
            return Err(WireError("string holds a NUL"));
        }
        let len = u32::try_from(s.len()).map_err(|_| WireError("string too long"))?;
        self.u32(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn sig(&mut self, s: &str) -> Result<()> {
        validate_signature(s.as_bytes())?;
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn value(&mut self, v: &Value) -> Result<()> {
        self.pad(alignment(v.code()));
        match v {
            Value::Byte(n) => self.buf.push(*n),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I16(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::U16(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::I32(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::U32(n) | Value::Fd(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::I64(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::U64(n) => self.buf.extend_from_slice(&n.to_le_bytes()),
            Value::F64(n) => self.buf.extend_from_slice(&n.to_bits().to_le_bytes()),
            Value::Str(s) => self.string(s)?,
            Value::Path(p) => {
                validate_path(p)?;
                self.string(p)?
            }
            Value::Sig(s) => self.sig(s)?,
            Value::Array(elem, items) => {
                let e = elem.as_bytes();
                let whole = format!("a{elem}");
                if e.is_empty() || one_type(whole.as_bytes(), 0, 0, 0)? != whole.len() {
                    return Err(WireError("array element signature is not one type"));
                }
                let at = self.buf.len();
                self.u32(0);
                self.pad(alignment(e[0]));
                let start = self.buf.len();
                for item in items {
                    if item.signature() != *elem {
                        return Err(WireError("array element of another type"));
                    }
                    self.value(item)?;
                }
                let len = self.buf.len() - start;
                if len > MAX_ARRAY {
                    return Err(WireError("array too long"));
                }
                self.buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            Value::Struct(fields) => {
                if fields.is_empty() {
                    return Err(WireError("empty struct"));
                }
                for f in fields {
                    self.value(f)?;
                }
            }
            Value::DictEntry(k, v) => {
                if !is_basic(k.code()) {
                    return Err(WireError("dict key is not a basic type"));
                }
                self.value(k)?;
                self.value(v)?;
            }
            Value::Variant(inner) => {
                self.sig(&inner.signature())?;
                self.value(inner)?;
            }
        }
        Ok(())
    }
}

/// Encodes values alone (as a message body starting at an 8-aligned offset).
pub fn encode_values(values: &[Value]) -> Result<Vec<u8>> {
    let mut e = Enc { buf: Vec::new() };
    for v in values {
        e.value(v)?;
    }
    Ok(e.buf)
}

// ---- decoding ----------------------------------------------------------------------------------

/// Reads values out of a message; alignment is relative to `buf`'s start (the message's).
struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
    depth: u32,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(WireError("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn align(&mut self, a: usize) -> Result<()> {
        let pad = (a - self.pos % a) % a;
        if self.take(pad)?.iter().any(|b| *b != 0) {
            return Err(WireError("non-zero padding"));
        }
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.align(N)?;
        let mut b: [u8; N] = self
            .take(N)?
            .try_into()
            .map_err(|_| WireError("truncated"))?;
        if self.big_endian {
            b.reverse();
        }
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        if self.take(1)? != [0] || bytes.contains(&0) {
            return Err(WireError("string not NUL-terminated or holds a NUL"));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| WireError("string is not UTF-8"))?;
        Ok(s.to_owned())
    }

    fn sig(&mut self) -> Result<&'a [u8]> {
        let len = usize::from(self.take(1)?[0]);
        let s = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(WireError("signature not NUL-terminated"));
        }
        validate_signature(s)?;
        Ok(s)
    }

    fn nest(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(WireError("values nested too deep"));
        }
        Ok(())
    }

    /// One value of the single complete type `sig` (already validated).
    fn value(&mut self, sig: &[u8]) -> Result<Value> {
        let Some(&c) = sig.first() else {
            return Err(WireError("empty type"));
        };
        Ok(match c {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(WireError("boolean other than 0 or 1")),
            },
            b'n' => Value::I16(i16::from_le_bytes(self.fixed()?)),
            b'q' => Value::U16(u16::from_le_bytes(self.fixed()?)),
            b'i' => Value::I32(i32::from_le_bytes(self.fixed()?)),
            b'u' => Value::U32(self.u32()?),
            b'h' => Value::Fd(self.u32()?),
            b'x' => Value::I64(i64::from_le_bytes(self.fixed()?)),
            b't' => Value::U64(u64::from_le_bytes(self.fixed()?)),
            b'd' => Value::F64(f64::from_bits(u64::from_le_bytes(self.fixed()?))),
            b's' => Value::Str(self.string()?),
            b'o' => {
                let p = self.string()?;
                validate_path(&p)?;
                Value::Path(p)
            }
            b'g' => {
                let s = self.sig()?;
                Value::Sig(String::from_utf8_lossy(s).into_owned())
            }
            b'v' => {
                let s = self.sig()?;
                if s.is_empty() || one_type(s, 0, 0, 0)? != s.len() {
                    return Err(WireError("variant signature is not one type"));
                }
                self.nest()?;
                let v = self.value(s)?;
                self.depth -= 1;
                Value::Variant(Box::new(v))
            }
            b'a' => {
                let len = self.u32()? as usize;
                if len > MAX_ARRAY {
                    return Err(WireError("array longer than 64 MiB"));
                }
                // `sig` is exactly one complete type, so the rest is the element type.
                let elem = &sig[1..];
                let Some(&first) = elem.first() else {
                    return Err(WireError("array without an element type"));
                };
                self.align(alignment(first))?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
                let end = end.ok_or(WireError("array runs past the message"))?;
                self.nest()?;
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value(elem)?);
                }
                if self.pos != end {
                    return Err(WireError("array element crosses the array's end"));
                }
                self.depth -= 1;
                let elem = String::from_utf8_lossy(elem).into_owned();
                Value::Array(elem, items)
            }
            b'(' => {
                self.align(8)?;
                self.nest()?;
                let mut fields = Vec::new();
                let mut i = 1;
                while sig.get(i).is_some_and(|c| *c != b')') {
                    let j = one_type(sig, i, 0, 0)?;
                    fields.push(self.value(&sig[i..j])?);
                    i = j;
                }
                self.depth -= 1;
                Value::Struct(fields)
            }
            b'{' => {
                self.align(8)?;
                self.nest()?;
                let k = self.value(&sig[1..2])?;
                let end = one_type(sig, 2, 0, 0)?;
                let v = self.value(&sig[2..end])?;
                self.depth -= 1;
                Value::DictEntry(Box::new(k), Box::new(v))
            }
            _ => return Err(WireError("bad type code in signature")),
        })
    }

    /// Values for each complete type of `sig` (already validated).
    fn values(&mut self, sig: &[u8]) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < sig.len() {
            let j = one_type(sig, i, 0, 0)?;
            out.push(self.value(&sig[i..j])?);
            i = j;
        }
        Ok(out)
    }
}

/// Decodes values of signature `sig` from `bytes` (a body that starts 8-aligned, in
/// little-endian order), all of `bytes` being used.
pub fn decode_values(sig: &str, bytes: &[u8]) -> Result<Vec<Value>> {
    validate_signature(sig.as_bytes())?;
    let mut d = Dec {
        buf: bytes,
        pos: 0,
        big_endian: false,
        depth: 0,
    };
    let v = d.values(sig.as_bytes())?;
    if d.pos != bytes.len() {
        return Err(WireError("bytes left after the values"));
    }
    Ok(v)
}

// ---- messages ----------------------------------------------------------------------------------

/// The four message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call = 1,
    Return = 2,
    Error = 3,
    Signal = 4,
}

/// `NO_REPLY_EXPECTED` in a message's flags.
pub const NO_REPLY_EXPECTED: u8 = 1;

/// One message: its header fields and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub flags: u8,
    /// Non-zero; set by the connection when it sends the message.
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    pub body: Vec<Value>,
}

impl Message {
    fn new(kind: Kind) -> Message {
        Message {
            kind,
            flags: 0,
            serial: 0,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            body: Vec::new(),
        }
    }

    /// A method call.
    pub fn call(
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Message {
        Message {
            destination: destination.map(str::to_owned),
            path: Some(path.to_owned()),
            interface: Some(interface.to_owned()),
            member: Some(member.to_owned()),
            body,
            ..Message::new(Kind::Call)
        }
    }

    /// An error reply to `to` (a call received).
    pub fn error(to: &Message, name: &str, text: &str) -> Message {
        Message {
            error_name: Some(name.to_owned()),
            reply_serial: Some(to.serial),
            destination: to.sender.clone(),
            body: vec![Value::str(text)],
            ..Message::new(Kind::Error)
        }
    }

    /// The message on the wire (little-endian).
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.serial == 0 {
            return Err(WireError("serial 0"));
        }
        let mut sig = String::new();
        self.body.iter().for_each(|v| v.write_signature(&mut sig));
        let field = |code: u8, v: Value| {
            Value::Struct(vec![Value::Byte(code), Value::Variant(Box::new(v))])
        };
        let mut fields = Vec::new();
        let strings = [
            (1, &self.path),
            (2, &self.interface),
            (3, &self.member),
            (4, &self.error_name),
            (6, &self.destination),
            (7, &self.sender),
        ];
        for (code, s) in strings {
            if let Some(s) = s {
                let v = if code == 1 {
                    Value::Path(s.clone())
                } else {
                    Value::str(s.clone())
                };
                fields.push(field(code, v));
            }
        }
        if let Some(r) = self.reply_serial {
            fields.push(field(5, Value::U32(r)));
        }
        if !sig.is_empty() {
            fields.push(field(8, Value::Sig(sig)));
        }
        let mut e = Enc {
            buf: vec![b'l', self.kind as u8, self.flags, 1],
        };
        e.u32(0);
        e.u32(self.serial);
        e.value(&Value::Array("(yv)".into(), fields))?;
        e.pad(8);
        let start = e.buf.len();
        for v in &self.body {
            e.value(v)?;
        }
        let body_len = e.buf.len() - start;
        if e.buf.len() > MAX_MESSAGE {
            return Err(WireError("message longer than 128 MiB"));
        }
        e.buf[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        Ok(e.buf)
    }

    /// Decodes one whole message (exactly [`message_len`] bytes).
    pub fn decode(buf: &[u8]) -> Result<Message> {
        decode(buf, true)
    }

    /// Decodes the header only, leaving the body empty: how a reply whose body does not decode
    /// is still matched to its call.
    pub fn decode_header(buf: &[u8]) -> Result<Message> {
        decode(buf, false)
    }
}

/// The byte order and total length of the message that `head` (its first 16 bytes or more)
/// starts.
pub fn message_len(head: &[u8]) -> Result<usize> {
    let head = head.get(..FIXED_HEADER).ok_or(WireError("truncated"))?;
    let big = match head[0] {
        b'l' => false,
        b'B' => true,
        _ => return Err(WireError("bad byte order mark")),
    };
    if head[3] != 1 {
        return Err(WireError("protocol version is not 1"));
    }
    let word = |at: usize| {
        let b: [u8; 4] = [head[at], head[at + 1], head[at + 2], head[at + 3]];
        u64::from(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let fields = word(12);
    if fields > MAX_ARRAY as u64 {
        return Err(WireError("header fields longer than 64 MiB"));
    }
    let total = (FIXED_HEADER as u64 + fields).div_ceil(8) * 8 + word(4);
    if total > MAX_MESSAGE as u64 {
        return Err(WireError("message longer than 128 MiB"));
    }
    Ok(total as usize)
}

fn decode(buf: &[u8], with_body: bool) -> Result<Message> {
    if message_len(buf)? != buf.len() {
        return Err(WireError("length does not match the header"));
    }
    let kind = match buf[1] {
        1 => Kind::Call,
        2 => Kind::Return,
        3 => Kind::Error,
        4 => Kind::Signal,
        _ => return Err(WireError("unknown message type")),
    };
    let mut d = Dec {
        buf,
        pos: 4,
        big_endian: buf[0] == b'B',
        depth: 0,
    };
    let body_len = d.u32()? as usize;
    let mut m = Message::new(kind);
    m.flags = buf[2];
    m.serial = d.u32()?;
    if m.serial == 0 {
        return Err(WireError("serial 0"));
    }
    let Value::Array(_, fields) = d.value(b"a(yv)")? else {
        return Err(WireError("header fields"));
    };
    let mut sig = String::new();
    for f in fields {
        let Value::Struct(mut f) = f else {
            return Err(WireError("header field"));
        };
        let (Some(Value::Variant(v)), Some(Value::Byte(code))) = (f.pop(), f.pop()) else {
            return Err(WireError("header field"));
        };
        let slot = match (code, *v) {
            (1, Value::Path(p)) => (&mut m.path, p),
            (2, Value::Str(s)) => (&mut m.interface, s),
            (3, Value::Str(s)) => (&mut m.member, s),
            (4, Value::Str(s)) => (&mut m.error_name, s),
            (6, Value::Str(s)) => (&mut m.destination, s),
            (7, Value::Str(s)) => (&mut m.sender, s),
            (5, Value::U32(n)) => {
                m.reply_serial = Some(n);
                continue;
            }
            (8, Value::Sig(s)) => {
                sig = s;
                continue;
            }
            (9, Value::U32(_)) => continue,
            (1..=9, _) => return Err(WireError("header field of the wrong type")),
            // Unknown fields are to be ignored.
            _ => continue,
        };
        *slot.0 = Some(slot.1);
    }
    let required = match kind {
        Kind::Call => m.path.is_some() && m.member.is_some(),
        Kind::Return => m.reply_serial.is_some(),
        Kind::Error => m.reply_serial.is_some() && m.error_name.is_some(),
        Kind::Signal => m.path.is_some() && m.interface.is_some() && m.member.is_some(),
    };
    if !required {
        return Err(WireError("a required header field is missing"));
    }
    d.align(8)?;
    if buf.len() - d.pos != body_len {
        return Err(WireError("body length does not match"));
    }
    if with_body {
        m.body = d.values(sig.as_bytes())?;
        if d.pos != buf.len() {
            return Err(WireError("body longer than its signature"));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Message {
        let mut m = Message::call(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "KillUnit",
            vec![Value::str("a.scope"), Value::str("all"), Value::I32(15)],
        );
        m.serial = 7;
        m
    }

    #[test]
    fn known_value_bytes() {
        // A string, then a u64 aligned to 8.
        assert_eq!(
            encode_values(&[Value::str("ab"), Value::U64(1)]).unwrap(),
            [2, 0, 0, 0, b'a', b'b', 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        // An empty array of structs still pads to its elements' alignment of 8.
        assert_eq!(
            encode_values(&[Value::Byte(9), Value::Array("(ii)".into(), vec![])]).unwrap(),
            [9, 0, 0, 0, 0, 0, 0, 0]
        );
        // A variant: its signature, then the value aligned as its type.
        assert_eq!(
            encode_values(&[Value::Variant(Box::new(Value::U32(7)))]).unwrap(),
            [1, b'u', 0, 0, 7, 0, 0, 0]
        );
        assert_eq!(
            encode_values(&[Value::Array("u".into(), vec![Value::U32(1), Value::U32(2)])]).unwrap(),
            [8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]
        );
    }

    #[test]
    fn values_round_trip() {
        let dict = Value::Array(
            "{sv}".into(),
            vec![Value::DictEntry(
                Box::new(Value::str("k")),
                Box::new(Value::Variant(Box::new(Value::Array(
                    "s".into(),
                    vec![Value::str("x")],
                )))),
            )],
        );
        let all = vec![
            Value::Byte(1),
            Value::Bool(true),
            Value::I16(-2),
            Value::U16(3),
            Value::I32(-4),
            Value::U32(5),
            Value::I64(-6),
            Value::U64(u64::MAX),
            Value::F64(1.5),
            Value::str("héllo"),
            Value::Path("/org/freedesktop/systemd1/job/42".into()),
            Value::Sig("a(sv)".into()),
            Value::Fd(0),
            Value::Struct(vec![Value::U32(1), Value::Path("/".into())]),
            dict,
        ];
        let mut sig = String::new();
        all.iter().for_each(|v| v.write_signature(&mut sig));
        assert_eq!(sig, "ybnqiuxtdsogh(uo)a{sv}");
        let bytes = encode_values(&all).unwrap();
        assert_eq!(decode_values(&sig, &bytes).unwrap(), all);
    }

    #[test]
    fn message_round_trip() {
        let m = call();
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(message_len(&bytes).unwrap(), bytes.len());
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        let mut h = Message::decode_header(&bytes).unwrap();
        assert!(h.body.is_empty());
        h.body = m.body.clone();
        assert_eq!(h, m);
    }

    #[test]
    fn encoding_refuses_what_cannot_be_sent() {
        let bad = [
            Value::str("nul\0inside"),
            Value::Path("no/leading/slash".into()),
            Value::Path("/trailing/".into()),
            Value::Sig("a".into()),
            Value::Array("u".into(), vec![Value::I32(1)]),
            Value::Array("uu".into(), vec![]),
            Value::Struct(vec![]),
        ];
        for v in bad {
            assert!(encode_values(std::slice::from_ref(&v)).is_err(), "{v:?}");
        }
        let mut m = call();
        m.serial = 0;
        assert!(m.encode().is_err());
    }

    /// A method return written out by hand, big-endian: reply to serial 3, body `u` 42.
    #[test]
    fn decodes_a_big_endian_reply() {
        let bytes = [
            b'B', 2, 0, 1, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 15, // fixed header
            5, 1, b'u', 0, 0, 0, 0, 3, // REPLY_SERIAL = 3
            8, 1, b'g', 0, 1, b'u', 0, // SIGNATURE = "u"
            0, // padding to 8
            0, 0, 0, 42, // body
        ];
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.kind, Kind::Return);
        assert_eq!(m.serial, 5);
        assert_eq!(m.reply_serial, Some(3));
        assert_eq!(m.body, [Value::U32(42)]);
    }

    #[test]
    fn signatures() {
        for ok in ["", "a{sv}", "a(ssssssouso)", "(uo)a(sa(sv))", "aaai", "v"] {
            assert!(validate_signature(ok.as_bytes()).is_ok(), "{ok}");
        }
        let deep_arrays = "a".repeat(33) + "y";
        let deep_structs = "(".repeat(33) + "y" + &")".repeat(33);
        for bad in [
            "a",
            "()",
            "(i",
            "i)",
            "a{vs}",
            "a{s}",
            "a{sss}",
            "{sv}",
            "z",
            &deep_arrays,
            &deep_structs,
        ] {
            assert!(validate_signature(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(validate_signature(&[b'y'; 256]).is_err());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let bytes = call().encode().unwrap();
        // Every truncation, and every single-byte change.
        for n in 0..bytes.len() {
            assert!(Message::decode(&bytes[..n]).is_err());
        }
        for i in 0..bytes.len() {
            for x in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = x;
                let _ = Message::decode(&b);
            }
        }
        // A boolean must be 0 or 1; padding must be zero.
        assert!(decode_values("b", &[2, 0, 0, 0]).is_err());
        assert!(decode_values("yu", &[1, 1, 0, 0, 5, 0, 0, 0]).is_err());
        // A string must end in NUL and be UTF-8.
        assert!(decode_values("s", &[1, 0, 0, 0, b'a', b'b']).is_err());
        assert!(decode_values("s", &[1, 0, 0, 0, 0xff, 0]).is_err());
        // An array longer than its message.
        assert!(decode_values("ay", &[0xff, 0xff, 0, 0, 1]).is_err());
        // An announced length beyond the limit.
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(message_len(&huge).is_err());
    }

    #[test]
    fn variants_nested_too_deep_are_refused() {
        let mut v = Value::U32(1);
        for _ in 0..100 {
            v = Value::Variant(Box::new(v));
        }
        let bytes = encode_values(std::slice::from_ref(&v)).unwrap();
        assert!(decode_values("v", &bytes).is_err());
        let mut ok = Value::U32(1);
        for _ in 0..60 {
            ok = Value::Variant(Box::new(ok));
        }
        let bytes = encode_values(std::slice::from_ref(&ok)).unwrap();
        assert_eq!(decode_values("v", &bytes).unwrap(), [ok]);
    }

    /// The StartTransientUnit body kechid sends, byte for byte as zvariant (an independent
    /// implementation) encodes the same arguments.
    #[test]
    fn start_transient_unit_body_matches_zvariant() {
        use zbus::zvariant::{Endian, Value as Zv, serialized::Context, to_bytes};
        let ours = encode_values(&[
            Value::str("kechi-demo-1.scope"),
            Value::str("fail"),
            Value::Array(
                "(sv)".into(),
                vec![
                    Value::Struct(vec![
                        Value::str("PIDs"),
                        Value::Variant(Box::new(Value::Array(
                            "u".into(),
                            vec![Value::U32(42), Value::U32(43)],
                        ))),
                    ]),
                    Value::Struct(vec![
                        Value::str("MemoryMax"),
                        Value::Variant(Box::new(Value::U64(1 << 28))),
                    ]),
                    Value::Struct(vec![
                        Value::str("SendSIGKILL"),
                        Value::Variant(Box::new(Value::Bool(true))),
                    ]),
                    Value::Struct(vec![
                        Value::str("KillSignal"),
                        Value::Variant(Box::new(Value::I32(15))),
                    ]),
                ],
            ),
            Value::Array("(sa(sv))".into(), vec![]),
        ])
        .unwrap();
        let props: Vec<(&str, Zv<'_>)> = vec![
            ("PIDs", Zv::from(vec![42u32, 43])),
            ("MemoryMax", Zv::from(1u64 << 28)),
            ("SendSIGKILL", Zv::from(true)),
            ("KillSignal", Zv::from(15i32)),
        ];
        let aux: Vec<(&str, Vec<(&str, Zv<'_>)>)> = vec![];
        let ctxt = Context::new_dbus(Endian::Little, 0);
        let theirs = to_bytes(ctxt, &("kechi-demo-1.scope", "fail", props, aux)).unwrap();
        assert_eq!(ours, theirs.bytes());
    }

    /// A JobRemoved signal as zbus builds it, in either byte order, decodes to what was sent.
    #[test]
    fn decodes_zbus_signals_in_both_byte_orders() {
        use zbus::zvariant::{Endian, ObjectPath};
        for endian in [Endian::Little, Endian::Big] {
            let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/101").unwrap();
            let m = zbus::message::Message::signal(
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "JobRemoved",
            )
            .unwrap()
            .endian(endian)
            .build(&(101u32, job, "kechi-demo-1.scope", "done"))
            .unwrap();
            let bytes = m.data().bytes();
            assert_eq!(message_len(bytes).unwrap(), bytes.len());
            let ours = Message::decode(bytes).unwrap();
            assert_eq!(ours.kind, Kind::Signal);
            assert_eq!(ours.member.as_deref(), Some("JobRemoved"));
            assert_eq!(
                ours.interface.as_deref(),
                Some("org.freedesktop.systemd1.Manager")
            );
            assert_eq!(
                ours.body,
                [
                    Value::U32(101),
                    Value::Path("/org/freedesktop/systemd1/job/101".into()),
                    Value::str("kechi-demo-1.scope"),
                    Value::str("done"),
                ]
            );
        }
    }
}
