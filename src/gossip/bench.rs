//! `deorch bench gossip`.
