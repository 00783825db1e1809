//! A DNS resolver whose answer the test sets, injected through `server::Options`. It counts
//! lookups and lets a test wait for the next ones, so "the proxy has seen this answer" is an
//! event, not a sleep.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;

use tether::upstream::discovery::Resolve;
use tokio::sync::watch;

/// What the next lookups return.
#[derive(Debug, Clone)]
pub enum Answer {
    Addrs(Vec<SocketAddr>),
    /// The lookup fails (SERVFAIL, resolver down).
    Fail,
}

pub struct ScriptedResolver {
    answer: Mutex<Answer>,
    /// Lookups answered so far, with the names asked.
    lookups: watch::Sender<u64>,
    asked: Mutex<Vec<(String, u16)>>,
}

impl ScriptedResolver {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Self { answer: Mutex::new(Answer::Addrs(addrs)), lookups: watch::channel(0).0, asked: Mutex::default() }
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().expect("answer lock") = answer;
    }

    pub fn lookups(&self) -> u64 {
        *self.lookups.borrow()
    }

    /// Names looked up so far.
    pub fn asked(&self) -> Vec<(String, u16)> {
        self.asked.lock().expect("asked lock").clone()
    }

    /// Wait until `n` more lookups than `after` were answered.
    pub async fn wait_lookups(&self, after: u64, n: u64) {
        let mut rx = self.lookups.subscribe();
        super::within(&format!("{n} more DNS lookups"), rx.wait_for(|&seen| seen >= after + n))
            .await
            .expect("resolver alive");
    }
}

impl Resolve for ScriptedResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let answer = self.answer.lock().expect("answer lock").clone();
        self.asked.lock().expect("asked lock").push((host.to_owned(), port));
        Box::pin(async move {
            // Counted when answered, so a waiter knows the proxy holds this answer.
            let result = match answer {
                Answer::Addrs(addrs) => Ok(addrs),
                Answer::Fail => Err(io::Error::other("scripted lookup failure")),
            };
            self.lookups.send_modify(|n| *n += 1);
            result
        })
    }
}
