//! A server-side TLS connection over rustls's unbuffered API, as the async byte stream hyper
//! and tunnels read and write.
//!
//! The buffered `rustls::ServerConnection` keeps a 4 KiB receive buffer for the life of the
//! connection, which is most of what an idle `wss` tunnel costs. Here the buffers are ours:
//! each poll borrows its thread's read and write buffers and hands them back before it
//! returns, so a connection keeps only what is still in flight (part of a record, ciphertext
//! the socket has not taken, plaintext the reader has not taken), in buffers of that size, and
//! a connection with nothing in flight holds only rustls's session state.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room made for one socket read: a whole record at its largest (16 KiB of payload plus the
/// most expansion TLS 1.2 allows, plus the header).
const READ_SIZE: usize = 16_384 + 2_048 + 5;
/// Ciphertext a connection may hold unprocessed: rustls joins a handshake message of up to
/// 64 KiB from records still in this buffer, plus one record being read.
const MAX_INCOMING: usize = 64 * 1024 + READ_SIZE;
/// Plaintext encrypted per write: what the socket has not taken waits in `outgoing`, so this
/// bounds the ciphertext held for a slow reader.
const MAX_WRITE: usize = 64 * 1024;

thread_local! {
    /// The buffers lent to the connection being polled on this thread.
    static SPARE_READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static SPARE_WRITE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An established server-side TLS connection (see [`accept`]).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read but not yet processed (a partial record).
    incoming: BytesMut,
    /// Ciphertext not yet written, and how much of it went out.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext decrypted but not yet taken by a read, and how much was taken; released once
    /// all of it was.
    plaintext: Vec<u8>,
    taken: usize,
    /// The client sent `close_notify` or ended its stream: reads see end of stream.
    read_closed: bool,
    /// Our `close_notify` is queued: nothing more may be written.
    write_closed: bool,
    /// The server name the client asked for (SNI), as sent.
    server_name: Option<Box<str>>,
}

/// Where processing the received records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Everything complete was processed: more ciphertext is needed to go further.
    NeedInput,
    /// Both sides sent `close_notify`.
    Closed,
}

/// Run the TLS handshake on `tcp` with `config`. Resolves once it is complete, with ALPN and
/// SNI known.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: BytesMut::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        taken: 0,
        read_closed: false,
        write_closed: false,
        server_name: None,
    };
    // Clear a name a failed handshake may have left on this thread.
    super::take_hello_name();
    poll_fn(|cx| stream.with_buffers(|stream| stream.poll_handshake(cx))).await?;
    Ok(stream)
}

impl TlsStream {
    /// The socket underneath, for readiness and addresses.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The application protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Take this thread's spare write buffer if the connection holds none.
    fn borrow_write_buffer(&mut self) {
        if self.outgoing.capacity() == 0 {
            self.outgoing = SPARE_WRITE.take();
        }
    }

    /// Hand the borrowed buffers back; bytes still in flight move to buffers of their size.
    fn return_buffers(&mut self) {
        if self.incoming.capacity() > self.incoming.len() {
            let keep = if self.incoming.is_empty() { BytesMut::new() } else { BytesMut::from(&self.incoming[..]) };
            let mut spare = mem::replace(&mut self.incoming, keep);
            spare.clear();
            SPARE_READ.set(Some(spare));
        }
        let unsent = self.outgoing.len() - self.sent;
        if self.outgoing.capacity() > unsent {
            let keep = self.outgoing[self.sent..].to_vec();
            self.sent = 0;
            let mut spare = mem::replace(&mut self.outgoing, keep);
            spare.clear();
            SPARE_WRITE.set(spare);
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.borrow_write_buffer();
        loop {
            let stop = self.process(None, None, false)?;
            if let Some(name) = super::take_hello_name() {
                self.server_name = Some(name);
            }
            if !self.conn.is_handshaking() {
                ready!(self.poll_send(cx))?;
                return Poll::Ready(Ok(()));
            }
            if stop == Stop::Closed || self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                )));
            }
            // Our flight goes out before we wait for the client's answer to it.
            ready!(self.poll_send(cx))?;
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                )));
            }
        }
    }

    /// Process the received records until more input is needed: decrypted application data
    /// goes into `sink` (the rest into `plaintext`), handshake and alert records into
    /// `outgoing`; once writing is allowed, `data` is encrypted into `outgoing` and, with
    /// `close`, a `close_notify` after it.
    fn process(
        &mut self,
        mut sink: Option<&mut ReadBuf<'_>>,
        mut data: Option<&[u8]>,
        mut close: bool,
    ) -> io::Result<Stop> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.send_alert();
                    return Err(invalid(e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let payload = record.map_err(invalid)?.payload;
                        let direct = match sink.as_deref_mut() {
                            Some(buf) => {
                                let n = payload.len().min(buf.remaining());
                                buf.put_slice(&payload[..n]);
                                n
                            }
                            None => 0,
                        };
                        self.plaintext.extend_from_slice(&payload[direct..]);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 0, |buf| encode.encode(buf).map_err(encode_room))?;
                    None
                }
                // Ours to send: everything in `outgoing` leaves in order, before anything
                // written later.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Stop::NeedInput),
                ConnectionState::WriteTraffic(mut write) => {
                    if let Some(data) = data.take() {
                        let room = data.len() + 64 * (data.len() / 16_384 + 1);
                        append(&mut self.outgoing, room, |buf| write.encrypt(data, buf).map_err(encrypt_room))?;
                    }
                    if close {
                        close = false;
                        append(&mut self.outgoing, 64, |buf| write.queue_close_notify(buf).map_err(encrypt_room))?;
                        // One more round: it reports `Closed` if the client had closed too.
                        None
                    } else {
                        Some(Stop::NeedInput)
                    }
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(Stop::Closed)
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data"));
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS connection state")),
            };
            self.incoming.advance(discard);
            if let Some(stop) = stop {
                if data.is_some() {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS connection closed for writing"));
                }
                return Ok(stop);
            }
        }
    }

    /// After a fatal error, put rustls's alert on the wire if the socket takes it now.
    fn send_alert(&mut self) {
        for _ in 0..4 {
            let state = self.conn.process_tls_records(&mut []).state;
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let sent = append(&mut self.outgoing, 0, |buf| encode.encode(buf).map_err(encode_room));
                    if sent.is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    break;
                }
                _ => break,
            }
        }
        let _ = self.tcp.try_write(&self.outgoing[self.sent..]);
    }

    /// Read what the socket has into `incoming`. `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS message too large")));
        }
        if self.incoming.capacity() == 0 {
            // Nothing held: wait for bytes before taking a buffer for them.
            ready!(self.tcp.poll_read_ready(cx))?;
            if let Some(spare) = SPARE_READ.take() {
                self.incoming = spare;
            }
        }
        self.incoming.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming)
    }

    /// Write `outgoing` out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Copy plaintext decrypted earlier into `buf`. True if any was there.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.taken == self.plaintext.len() {
            return false;
        }
        let n = (self.plaintext.len() - self.taken).min(buf.remaining());
        buf.put_slice(&self.plaintext[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
        true
    }
}

/// Append to `out` what `write` puts into the room it is given, `room` bytes at first; `write`
/// answers `Err(Some(n))` when it needs `n` bytes, `Err(None)` when it cannot write at all.
fn append(
    out: &mut Vec<u8>,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<usize> {
    let start = out.len();
    let mut room = room;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(n);
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS record could not be written"));
            }
        }
    }
}

/// The room an encoding needs, if more room is what it needs.
fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        EncodeError::AlreadyEncoded => None,
    }
}

/// The room an encryption needs, if more room is what it needs.
fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        EncryptError::EncryptExhausted => None,
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    fn read_into(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 || self.take_plaintext(buf) {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            if self.process(Some(buf), None, false)? == Stop::Closed || buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                continue;
            }
            // A key update answered while reading goes out without holding the read up (a
            // write or flush finishes it if the socket is full), unless answers pile up: a
            // client that sends them without reading is not read from either.
            if self.outgoing.len() - self.sent > MAX_WRITE {
                ready!(self.poll_send(cx))?;
            } else if self.sent < self.outgoing.len()
                && let Poll::Ready(Err(e)) = self.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                if !self.incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "TLS record cut short")));
                }
                // The client closed without `close_notify`: the end of the stream all the same,
                // as HTTP framing and WebSocket Close frames say whether anything was cut.
                self.read_closed = true;
            }
        }
    }

    fn write_from(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS connection closed for writing")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Earlier ciphertext goes out before more is taken: a slow reader holds back the writer.
        ready!(self.poll_send(cx))?;
        let n = buf.len().min(MAX_WRITE);
        self.borrow_write_buffer();
        self.process(None, Some(&buf[..n]), false)?;
        // Start sending now; what the socket does not take waits for the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.borrow_write_buffer();
            self.process(None, None, true)?;
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    /// Run `f`, which may borrow this thread's buffers, and hand them back.
    fn with_buffers<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let out = f(self);
        self.return_buffers();
        out
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_buffers(|this| this.read_into(cx, buf))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().with_buffers(|this| this.write_from(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.outgoing.capacity() == 0 {
            return Pin::new(&mut this.tcp).poll_flush(cx);
        }
        this.with_buffers(|this| {
            ready!(this.poll_send(cx))?;
            Pin::new(&mut this.tcp).poll_flush(cx)
        })
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_buffers(|this| this.close(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConfig, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client;

    use super::*;
    use crate::tls::SniResolver;

    const WAIT: Duration = Duration::from_secs(10);

    /// A CA, a leaf for `localhost`, the server config serving it (the listener's resolver)
    /// and a client config trusting the CA.
    fn configs(version: &'static SupportedProtocolVersion, alpn: &[&[u8]]) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let certified = Arc::new(CertifiedKey::from_der(vec![leaf.der().clone()], key, &provider).expect("key"));
        let resolver = SniResolver { exact: HashMap::new(), wildcard: HashMap::new(), default: certified };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_cert.der().to_vec())).expect("root");
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    /// Both ends of one connection over loopback, handshake done.
    async fn pair(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (TlsStream, client::TlsStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.expect("client handshake")
        };
        let serve = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(tcp, server).await.expect("server handshake")
        };
        tokio::time::timeout(WAIT, async { tokio::join!(serve, connect) }).await.expect("handshake in time")
    }

    fn holds_nothing(stream: &TlsStream) -> bool {
        stream.incoming.capacity() == 0 && stream.outgoing.capacity() == 0 && stream.plaintext.capacity() == 0
    }

    #[tokio::test]
    async fn alpn_and_the_server_name_are_reported() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server, client) = configs(version, &[b"h2"]);
            let (stream, _client) = pair(server, client).await;
            assert_eq!(stream.alpn_protocol(), Some(&b"h2"[..]));
            assert_eq!(stream.server_name(), Some("localhost"));
        }
    }

    #[tokio::test]
    async fn bytes_cross_intact_both_ways_and_nothing_is_held_after() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server, client) = configs(version, &[b"http/1.1"]);
            let (mut stream, mut client) = pair(server, client).await;
            // Larger than any record and than any one read, sent both ways at once.
            let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
            let upload = async {
                client.write_all(&data).await.expect("client write");
                client.flush().await.expect("client flush");
                let mut back = vec![0u8; data.len()];
                client.read_exact(&mut back).await.expect("client read");
                back
            };
            let echo = async {
                let mut got = vec![0u8; data.len()];
                let mut filled = 0;
                while filled < got.len() {
                    let n = stream.read(&mut got[filled..]).await.expect("server read");
                    assert_ne!(n, 0, "end of stream after {filled} bytes");
                    stream.write_all(&got[filled..filled + n]).await.expect("server write");
                    filled += n;
                }
                stream.flush().await.expect("server flush");
                got
            };
            let (back, got) = tokio::time::timeout(WAIT, async { tokio::join!(upload, echo) }).await.expect("in time");
            assert!(got == data, "the server read what the client wrote");
            assert!(back == data, "the client read what the server wrote");
            assert!(holds_nothing(&stream), "an idle connection holds no buffer");
        }
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_each_way() {
        let (server, client) = configs(&rustls::version::TLS13, &[b"http/1.1"]);
        let (mut stream, mut client) = pair(server, client).await;
        client.write_all(b"last words").await.expect("write");
        client.shutdown().await.expect("client close_notify");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await.expect("in time").expect("server read");
        assert_eq!(got, b"last words");
        // The other direction is still open until the server closes it too.
        stream.write_all(b"reply").await.expect("server write");
        stream.shutdown().await.expect("server close_notify");
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, client.read_to_end(&mut reply)).await.expect("in time").expect("client read");
        assert_eq!(reply, b"reply");
        let state = client.get_mut().1.process_new_packets().expect("client state");
        assert!(state.peer_has_closed(), "the client saw close_notify");
        assert!(holds_nothing(&stream));
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (server, client) = configs(&rustls::version::TLS13, &[b"http/1.1"]);
        let (mut stream, mut client) = pair(server, client).await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().expect("key update");
            client.write_all(&[round; 100]).await.expect("write");
            client.flush().await.expect("flush");
            let mut got = [0u8; 100];
            tokio::time::timeout(WAIT, stream.read_exact(&mut got)).await.expect("in time").expect("read");
            assert_eq!(got, [round; 100]);
            stream.write_all(&[round + 10; 50]).await.expect("server write");
            stream.flush().await.expect("server flush");
            let mut back = [0u8; 50];
            tokio::time::timeout(WAIT, client.read_exact(&mut back)).await.expect("in time").expect("client read");
            assert_eq!(back, [round + 10; 50]);
        }
    }

    #[tokio::test]
    async fn a_record_split_across_reads_is_kept_in_a_buffer_of_its_size() {
        let (server, client) = configs(&rustls::version::TLS13, &[b"http/1.1"]);
        let (mut stream, client) = pair(server, client).await;
        let (mut tcp, mut conn) = client.into_inner();
        std::io::Write::write_all(&mut conn.writer(), &[7u8; 3000]).expect("plaintext");
        let mut record = Vec::new();
        conn.write_tls(&mut record).expect("ciphertext");
        let (head, tail) = record.split_at(1000);
        tcp.write_all(head).await.expect("send head");
        // Poll the server until the head has arrived: the read stays pending on the tail.
        let mut buf = [0u8; 4096];
        let arrived = tokio::time::timeout(WAIT, async {
            loop {
                let mut rb = ReadBuf::new(&mut buf);
                let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut stream).poll_read(cx, &mut rb))).await;
                assert!(polled.is_pending(), "no plaintext before the whole record");
                if stream.incoming.len() == head.len() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(arrived.is_ok(), "the head reached the server");
        assert_eq!(stream.incoming.capacity(), head.len(), "the partial record is held at its size");
        tcp.write_all(tail).await.expect("send tail");
        let mut got = [0u8; 3000];
        tokio::time::timeout(WAIT, stream.read_exact(&mut got)).await.expect("in time").expect("read");
        assert_eq!(got, [7u8; 3000]);
        assert!(holds_nothing(&stream));
    }

    #[tokio::test]
    async fn plain_text_on_a_tls_port_fails_the_handshake() {
        let (server, _) = configs(&rustls::version::TLS13, &[]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
        let (tcp, _) = listener.accept().await.expect("accept");
        let refused = tokio::time::timeout(WAIT, accept(tcp, server)).await.expect("in time");
        assert_eq!(refused.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }
}
