"""The provider agent (`underbid provider run`): heartbeats, claims and keeps capacity offered."""
