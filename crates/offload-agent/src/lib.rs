//! offload-agent
