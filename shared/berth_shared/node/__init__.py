"""Node-side storage operations (attach, mount, detach) used by the CSI adapter and attacher."""
