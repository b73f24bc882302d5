"""Flower ClientApp of HyDiscGAN (entry point named in pyproject.toml)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import handlers

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handlers.train(msg, context)
