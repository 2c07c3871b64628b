"""The use cases: one options dataclass and one function each, composing the layers below."""
