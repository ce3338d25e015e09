"""Skill machinery: boundary detection, segments, segment-conditioned and hierarchical policies."""
