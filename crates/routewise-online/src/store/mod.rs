//! Where online state lives, behind one async trait, [`StateStore`]: record a decision,
//! apply a feedback (atomically: lookup, duplicate check, log, arm statistics), load the
//! arms, purge expired decisions, ping. Two backends: [`local`] (a redb file, the
//! embedded default; its blocking calls run on tokio's blocking pool inside the trait
//! methods) and [`redis`] (shared by several instances). [`open::open`] picks one from the
//! config's `backend`. The trait and its types are in [`state_store`]. A new store is one file implementing the trait plus one
//! [`crate::config::Backend`] variant.

pub mod budget;
pub mod keys;
pub mod local;
pub mod open;
pub mod redis;
pub mod state_store;
