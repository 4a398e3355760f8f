//! cli. OWNER: lead.
