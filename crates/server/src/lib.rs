//! The control plane: HTTP API, auth, event streams, reaper and the embedded factory.
