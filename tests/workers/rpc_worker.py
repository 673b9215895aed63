"""A throwaway RPC worker process for transport tests: `echo` and `hold` (never answers)."""

import asyncio
import sys
from pathlib import Path

from service.transport.rpc import Peer, RpcServer


async def echo(_: Peer, value: object) -> object:
    return value


async def hold(_: Peer) -> None:
    await asyncio.Event().wait()


async def main(path: Path) -> None:
    await RpcServer({"echo": echo, "hold": hold}).start(path)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
