"""The af compiler: .af file -> validated AgentSpec -> ONNX and WebAssembly -> bundle (.afb)."""

__all__: list[str] = []
