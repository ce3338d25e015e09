"""Skill machinery: boundary detection, LoRA skill libraries, composition (later issues)."""
