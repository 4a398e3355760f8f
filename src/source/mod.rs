//! Sources of desired state (manifest directory, local API; later git,
//! gossip, signed push). OWNER: lead.
