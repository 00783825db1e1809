//! SEND: published through the instance, or for `/app/...` handed to the application first.
//! Either way the answer waits on the broker, queued in frame order.

use futures_util::FutureExt as _;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{End, RESERVED_HEADERS, Reply, Session, protocol_error};
use crate::app::app_forward::{self, is_app_destination};
use crate::app::broker::{BrokerError, Envelope};
use crate::app::instance::unix_ms;
use crate::app::metrics::Source;
use crate::app::stomp::Frame;

impl Session {
    /// A SEND (now, or at its transaction's COMMIT): published, or for `/app/...` handed to
    /// the application. Its answer waits on the broker; a failure is an ERROR even without a
    /// receipt, since the message reached nobody.
    pub(super) fn on_send(&mut self, frame: Frame) -> Result<(), End> {
        let Some(destination) = frame.get("destination") else {
            return Err(protocol_error(&frame, "SEND without destination"));
        };
        let receipt = frame.get("receipt").map(str::to_owned);
        if let Some(rate) = &mut self.rate
            && !rate.allow(std::time::Instant::now())
        {
            self.inst.metrics.publish_rate_limited.inc();
            let limit = self.inst.settings.max_publish_rate.unwrap_or_default();
            let detail = format!("more than {limit} SEND frames per second on this connection (--max-publish-rate)");
            return Err(End::Error {
                frame: super::frames::error("publish rate exceeded", receipt.as_deref(), &detail),
                code: CloseCode::Policy,
            });
        }
        if is_app_destination(destination) {
            return self.forward_to_app(frame, receipt);
        }
        let envelope = Envelope {
            origin: self.inst.nonce,
            instance: self.inst.id.clone(),
            id: self.inst.next_message_id(),
            destination: destination.to_owned(),
            sender: self.user.clone(),
            content_type: frame.get("content-type").map(str::to_owned),
            headers: frame.headers.iter().filter(|(n, _)| !RESERVED_HEADERS.contains(&n.as_str())).cloned().collect(),
            body: frame.body.clone(),
            published_at_ms: unix_ms(),
            stream_id: None,
        };
        let published = self.inst.publish(envelope, Source::Stomp);
        self.answer_after(receipt, published, NOT_PUBLISHED);
        Ok(())
    }

    fn forward_to_app(&mut self, frame: Frame, receipt: Option<String>) -> Result<(), End> {
        let Some(base) = self.inst.settings.app_url.clone() else {
            return Err(protocol_error(
                &frame,
                "no application handles /app destinations (the backend runs without --app-url)",
            ));
        };
        let inst = self.inst.clone();
        let (user, session) = (self.user.clone(), self.name.clone());
        self.pending.push_back(
            async move {
                let timeout = inst.settings.confirm_timeout;
                let user_header = &inst.settings.user_header;
                let answer = app_forward::forward(&base, user_header, user.as_deref(), &session, &frame, timeout).await;
                let publish = match answer {
                    Ok(None) => return Reply::Done(receipt),
                    Ok(Some(p)) => p,
                    Err(e) => {
                        inst.metrics.app_forward_failures.inc();
                        let detail = e.to_string();
                        return Reply::Failed { message: "the application refused the message", receipt, detail };
                    }
                };
                let envelope = Envelope {
                    origin: inst.nonce,
                    instance: inst.id.clone(),
                    id: inst.next_message_id(),
                    destination: publish.destination,
                    sender: user,
                    content_type: Some(publish.content_type),
                    headers: Vec::new(),
                    body: publish.body,
                    published_at_ms: unix_ms(),
                    stream_id: None,
                };
                match tokio::time::timeout(timeout, inst.publish(envelope, Source::App)).await {
                    Ok(Ok(())) => Reply::Done(receipt),
                    Ok(Err(e)) => broker_failed(receipt, &e),
                    Err(_) => broker_failed(receipt, &BrokerError::Timeout),
                }
            }
            .boxed(),
        );
        Ok(())
    }
}

/// The ERROR `message` of a SEND the broker did not take.
const NOT_PUBLISHED: &str = "message not published";

fn broker_failed(receipt: Option<String>, e: &BrokerError) -> Reply {
    Reply::Failed { message: NOT_PUBLISHED, receipt, detail: e.to_string() }
}
