"""The AI core: backends (local TFLite, mesh peers, remote HTTP), the router, the bench."""
