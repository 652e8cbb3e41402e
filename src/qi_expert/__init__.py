"""qi-expert: teach local code LLMs the @qi TypeScript ecosystem, and measure it."""

__version__ = "0.1.0"
