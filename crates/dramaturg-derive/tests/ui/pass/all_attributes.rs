use std::time::Duration;

use dramaturg::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(
    name = "welcome",
    queue = "mail",
    max_retries = 5,
    min_backoff = "500ms",
    max_backoff = "1m30s",
    time_limit = "2h",
    idle_timeout = "45s",
    on_success = WelcomeSent,
    on_failure = "welcome_failed",
    on_retry_exhausted = "welcome_given_up",
    max_age = "1d",
    priority = 255,
    abortable = false,
    output = Vec<String>,
    option(tenant = "acme", weight = 3 * 2)
)]
struct SendWelcome {
    user_id: u64,
}

impl SendWelcome {
    async fn perform(self, _ctx: &Context) -> Result<Vec<String>, std::io::Error> {
        Ok(vec![self.user_id.to_string()])
    }
}

/// A callback actor named by its type.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "welcome_sent")]
struct WelcomeSent {
    result: Vec<String>,
}

impl WelcomeSent {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        let _ = self.result;
        Ok(())
    }
}

/// The handle of a send is typed by the actor.
#[allow(dead_code)]
async fn typed_handle(app: &App) -> dramaturg::Sent<SendWelcome> {
    SendWelcome { user_id: 1 }.send(app).await.unwrap()
}

fn main() {
    let options = SendWelcome::options();
    assert_eq!(SendWelcome::NAME, "welcome");
    assert_eq!(SendWelcome::QUEUE, "mail");
    assert_eq!(options.max_retries, Some(5));
    assert_eq!(options.min_backoff, Some(Duration::from_millis(500)));
    assert_eq!(options.max_backoff, Some(Duration::from_secs(90)));
    assert_eq!(options.time_limit, Some(Duration::from_secs(7200)));
    assert_eq!(options.max_age, Some(Duration::from_secs(86_400)));
    assert_eq!(options.priority, Some(255));
    assert_eq!(options.idle_timeout, Some(Duration::from_secs(45)));
    assert_eq!(options.option(dramaturg::callbacks::ON_SUCCESS).unwrap().as_deref(), Some("welcome_sent"));
    assert_eq!(options.option(dramaturg::abort::ABORTABLE).unwrap(), Some(false));
    assert_eq!(options.extra::<String>("tenant").unwrap().as_deref(), Some("acme"));
    assert_eq!(options.extra::<u32>("weight").unwrap(), Some(6));
    assert_eq!(options.extra::<String>("on_failure").unwrap().as_deref(), Some("welcome_failed"));
    assert_eq!(options.extra::<String>("on_retry_exhausted").unwrap().as_deref(), Some("welcome_given_up"));
}
