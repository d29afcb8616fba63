"""The bus contract: every `afrt.bus.Bus` implementation must pass these tests.

A new transport (the Redis Streams one of a later issue) plugs in by adding a factory to
`BUS_FACTORIES`; nothing else changes. Channel tests cover `open_memory_channel` itself.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from afcore.errors import ChannelClosedError, MailboxFullError
from afrt.bus import Message, MemoryBus, TokenBucket, open_memory_channel

from redis_server import redis_bus_factory  # noqa: E402 - tests/ is on sys.path (conftest.py)

#: name -> async factory of a fresh, empty bus
BUS_FACTORIES = {"memory": lambda: MemoryBus("contract"), "redis": redis_bus_factory}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def msg(topic: str, i: int, sender: str = "a") -> Message:
    return Message(topic, sender, str(i).encode())


@pytest.fixture(params=sorted(BUS_FACTORIES))
def make_bus(request):
    return BUS_FACTORIES[request.param]


class TestBusContract:
    def test_every_subscriber_gets_every_message_in_order(self, make_bus):
        async def main():
            bus = make_bus()
            subs = [bus.subscribe("task.completion") for _ in range(3)]
            for i in range(20):
                await bus.publish(msg("task.completion", i))
            for sub in subs:
                got = [int((await sub.receive()).payload) for _ in range(20)]
                assert got == list(range(20))
            await bus.aclose()

        run(main())

    def test_topics_are_separate(self, make_bus):
        async def main():
            bus = make_bus()
            life = bus.subscribe("agent.lifecycle")
            done = bus.subscribe("task.completion")
            await bus.publish(msg("agent.lifecycle", 1))
            await bus.publish(msg("task.completion", 2))
            assert (await life.receive()).payload == b"1"
            assert (await done.receive()).payload == b"2"
            assert done.statistics().current_buffer_used == 0
            await bus.aclose()

        run(main())

    def test_publish_waits_for_a_full_subscriber(self, make_bus):
        async def main():
            bus = make_bus()
            sub = bus.subscribe("t", max_buffer_size=2)
            await bus.publish(msg("t", 0))
            await bus.publish(msg("t", 1))
            blocked = asyncio.create_task(bus.publish(msg("t", 2)))
            await asyncio.sleep(0.01)
            assert not blocked.done()  # backpressure: no message dropped, the publisher waits
            assert (await sub.receive()).payload == b"0"
            await asyncio.wait_for(blocked, 1)
            assert [(await sub.receive()).payload for _ in range(2)] == [b"1", b"2"]
            await bus.aclose()

        run(main())

    def test_queue_gives_each_item_to_exactly_one_receiver(self, make_bus):
        async def main():
            bus = make_bus()
            send, receive = bus.open_queue("work", max_buffer_size=8)
            seen: list[int] = []

            async def worker():
                async for item in receive:
                    seen.append(item)
                    await asyncio.sleep(0)

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            await send.send_many(range(500))
            send.close()
            await asyncio.gather(*workers)
            assert sorted(seen) == list(range(500))
            await bus.aclose()

        run(main())

    def test_weighted_queue_batches_by_weight(self, make_bus):
        # The swarm's work queue carries blocks of records weighted by their length.
        async def main():
            bus = make_bus()
            send, receive = bus.open_queue("blocks", max_buffer_size=72, weight=len)
            blocks = [list(range(i, i + n)) for i, n in ((0, 30), (30, 30), (60, 10), (70, 64))]
            await send.send_many(blocks[:3])
            assert await receive.receive_batch(64) == blocks[:2]  # 30 + 30, and 10 more would be 70
            sending = asyncio.create_task(send.send(blocks[3]))  # 10 + 64 > 72: waits for room
            await asyncio.sleep(0.01)
            assert not sending.done()
            assert await receive.receive_batch(64) == [blocks[2]]
            await sending
            assert await receive.receive_batch(64) == [blocks[3]]
            await bus.aclose()

        run(main())

    def test_closed_bus_refuses_publish(self, make_bus):
        async def main():
            bus = make_bus()
            sub = bus.subscribe("t")
            await bus.aclose()
            with pytest.raises(ChannelClosedError):
                await bus.publish(msg("t", 1))
            with pytest.raises(ChannelClosedError):
                await sub.receive()

        run(main())

    def test_statistics_count_messages_and_bytes(self, make_bus):
        async def main():
            bus = make_bus()
            await bus.publish(Message("task.completion", "ag", b"12345"))
            stats = bus.statistics()
            assert stats["published"]["task.completion"] == 1
            assert stats["bytes"]["task.completion"] == 5
            await bus.aclose()

        run(main())


class TestMemoryChannel:
    def test_send_nowait_raises_when_full(self):
        send, receive = open_memory_channel(1)
        send.send_nowait(1)
        with pytest.raises(MailboxFullError) as info:
            send.send_nowait(2)
        assert info.value.code == "AF5102"
        assert send.statistics().current_buffer_used == 1

    def test_end_of_channel_after_drain(self):
        async def main():
            send, receive = open_memory_channel(4)
            await send.send("a")
            send.close()
            assert await receive.receive() == "a"
            with pytest.raises(ChannelClosedError) as info:
                await receive.receive()
            assert info.value.code == "AF5104"

        run(main())

    def test_send_after_receivers_closed(self):
        send, receive = open_memory_channel(4)
        receive.close()
        with pytest.raises(ChannelClosedError) as info:
            send.send_nowait(1)
        assert info.value.code == "AF5103"

    def test_receive_batch_takes_what_is_waiting_up_to_max(self):
        async def main():
            send, receive = open_memory_channel(math.inf)
            await send.send_many(range(10))
            assert await receive.receive_batch(4) == [0, 1, 2, 3]
            assert await receive.receive_batch(100) == [4, 5, 6, 7, 8, 9]

        run(main())

    def test_weighted_items_count_as_their_weight_in_batches(self):
        # Blocks of records: receive_batch takes whole items while their weights stay within max.
        async def main():
            send, receive = open_memory_channel(math.inf, weight=len)
            await send.send_many([[1] * 3, [2] * 3, [3] * 2, [4] * 5, [5] * 9])
            assert await receive.receive_batch(8) == [[1] * 3, [2] * 3, [3] * 2]
            assert await receive.receive_batch(8) == [[4] * 5]  # 5 + 9 would be over 8
            assert await receive.receive_batch(8) == [[5] * 9]  # the first item is always taken

        run(main())

    def test_weighted_items_count_as_their_weight_in_the_bound(self):
        async def main():
            send, receive = open_memory_channel(4, weight=len)
            send.send_nowait([1, 1, 1])
            with pytest.raises(MailboxFullError):
                send.send_nowait([2, 2])  # 3 + 2 > 4
            send.send_nowait([3])
            assert receive.statistics().current_buffer_used == 4
            assert await receive.receive() == [1, 1, 1]
            send.send_nowait([2, 2])
            empty_send, empty_receive = open_memory_channel(4, weight=len)
            empty_send.send_nowait([9] * 10)  # an empty buffer takes any item: a heavy one cannot wedge
            assert empty_receive.statistics().current_buffer_used == 10

        run(main())

    def test_receive_batch_waits_for_more_within_the_deadline(self):
        async def main():
            send, receive = open_memory_channel(16)

            async def late():
                await send.send(1)
                await asyncio.sleep(0.005)
                await send.send(2)

            task = asyncio.create_task(late())
            batch = await receive.receive_batch(8, wait=1.0)
            await task
            # The second record came 5 ms after the first, well within the 1 s wait: one batch.
            assert batch == [1, 2]

        run(main())

    def test_statistics_report_waiting_tasks(self):
        async def main():
            send, receive = open_memory_channel(1)
            waiter = asyncio.create_task(receive.receive())
            await asyncio.sleep(0)
            assert receive.statistics().tasks_waiting_receive == 1
            await send.send(5)
            assert await waiter == 5
            s = send.statistics()
            assert (s.items_sent, s.items_received, s.open_send_channels, s.open_receive_channels) == (1, 1, 1, 1)

        run(main())

    def test_bad_buffer_size(self):
        with pytest.raises(ValueError):
            open_memory_channel(0)


class TestTokenBucket:
    def test_burst_then_rate(self):
        now = [0.0]
        bucket = TokenBucket(1000, clock=lambda: now[0])
        assert bucket.delay_for(1000) == 0.0  # a full second of burst
        assert bucket.delay_for(500) == pytest.approx(0.5)  # then at the rate: 500 bytes take 0.5 s
        now[0] = 2.0
        assert bucket.delay_for(100) == 0.0

    def test_consume_sleeps_for_the_deficit(self):
        async def main():
            bucket = TokenBucket(10_000, capacity=100)
            await bucket.consume(100)
            await bucket.consume(200)
            assert bucket.waited == pytest.approx(0.02, rel=0.05)

        run(main())
