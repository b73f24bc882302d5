"""Flower ClientApp of HyDiscGAN (entry point named in pyproject.toml)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import handlers, secure_aggregation
from secagg.protocol import SETUP, SHARE_KEYS, UNMASK

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handlers.train(msg, context)


# Secure aggregation's key stages around training (docs/secure-aggregation.md).
@app.query(SETUP)
def secagg_setup(msg: Message, context: Context) -> Message:
    return secure_aggregation.setup(msg, context)


@app.query(SHARE_KEYS)
def secagg_share_keys(msg: Message, context: Context) -> Message:
    return secure_aggregation.share_keys(msg, context)


@app.query(UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    return secure_aggregation.unmask(msg, context)
