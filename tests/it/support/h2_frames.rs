//! HTTP/2 spoken frame by frame over a plain socket (prior knowledge), for what a well-behaved
//! client library will not do: open streams past the advertised limit, reset streams as fast
//! as it opens them, send CONTINUATION frames without end.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;

/// One frame as read off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        self.payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    /// The `(identifier, value)` pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
            .collect()
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block for `GET <path>` on authority `h` (static-table names, literal values).
pub fn get_block(path: &str) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6), :path literal with name 4, :authority "h".
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'h']);
    block
}

/// A client connection speaking raw frames.
pub struct RawH2 {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connect, send the preface and an empty SETTINGS frame, and acknowledge the server's
    /// SETTINGS, which are returned.
    pub async fn connect(addr: SocketAddr) -> (Self, Vec<(u16, u32)>) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
        let mut conn = Self { stream, buf: Vec::new() };
        let settings =
            conn.until(|f| f.kind == SETTINGS && f.flags & ACK == 0).await.expect("the server's SETTINGS").settings();
        conn.send(&frame(SETTINGS, ACK, 0, &[])).await.expect("settings ack");
        (conn, settings)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        within("an HTTP/2 frame", async {
            loop {
                if self.buf.len() >= 9 {
                    let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                    if self.buf.len() >= 9 + len {
                        let stream = u32::from_be_bytes(self.buf[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff;
                        let f = Frame {
                            kind: self.buf[3],
                            flags: self.buf[4],
                            stream,
                            payload: self.buf[9..9 + len].to_vec(),
                        };
                        self.buf.drain(..9 + len);
                        return Some(f);
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// Frames until one matches `want`; `None` if the connection ends first.
    pub async fn until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        loop {
            let f = self.next().await?;
            if want(&f) {
                return Some(f);
            }
        }
    }
}
