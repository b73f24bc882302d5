"""Privacy tools: attacks that measure what shared features or generators leak, and accountants."""
