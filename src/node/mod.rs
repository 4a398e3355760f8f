//! node. OWNER: lead.
