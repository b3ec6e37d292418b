//! Ridge router (placeholder until the router-lab work lands it).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearRouter {}
