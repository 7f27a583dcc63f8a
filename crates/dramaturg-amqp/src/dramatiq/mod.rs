//! Python Dramatiq's RabbitMQ layout ([`Protocol::Dramatiq`](dramaturg_core::Protocol)),
//! one concept per module:
//!
//! - [`layout`]: the queues `q`, `q.DQ` and `q.XQ` with Dramatiq's
//!   arguments, declared passively first so that queues Python created are
//!   used as they are;
//! - [`route`]: where a message goes and what Dramatiq's broker writes
//!   into it on the way (`queue_name`, `options.eta`, `options.traceback`);
//! - [`admin`]: statistics, purge and join over the three queues.
//!
//! The consumer of `q.DQ` that moves each delayed message to `q` when it
//! falls due is part of the consumer (`consumer::mover`), whose
//! settlement it shares.

pub(crate) mod admin;
pub(crate) mod layout;
pub(crate) mod route;
