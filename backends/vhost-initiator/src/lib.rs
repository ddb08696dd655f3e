//! Placeholder: the vhost-user initiator is being written.
