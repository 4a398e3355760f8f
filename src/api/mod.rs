//! api. OWNER: lead.
