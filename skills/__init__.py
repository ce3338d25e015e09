"""Skill machinery: boundary detection, segments, segment-conditioned and hierarchical policies,
switching demonstrations, and the measurements of the SBD studies (``sbd``, ``evaluate``)."""
