"""Whose turn it is (runtime/turns.py): at most `count` jobs at once, the rest in the order they came.

The same rules under a queue of real and cancelled jobs are in test_job_order.py (a hypothesis
state machine) and test_serve.py; here, the line on its own."""

import asyncio
import threading

from sdxl_worker.runtime.turns import Turns

WAIT_S = 10


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


def test_turns_are_free_up_to_the_count_then_jobs_wait_in_order():
    async def scenario():
        turns = Turns(count=2)
        first, second, third, fourth = (turns.ask() for _ in range(4))
        assert [t.ready.done() for t in (first, second, third, fourth)] == [True, True, False, False]
        assert (turns.running, turns.waiting) == (2, 2)
        turns.give_back(second)
        await third.ready
        assert not fourth.ready.done()
        turns.give_back(first)
        await fourth.ready
        assert (turns.running, turns.waiting) == (2, 0)
        turns.give_back(third)
        turns.give_back(fourth)
        assert (turns.running, turns.waiting) == (0, 0)

    _run(scenario())


def test_a_job_that_leaves_the_line_costs_no_turn():
    async def scenario():
        turns = Turns(count=1)
        running, cancelled, next_one = turns.ask(), turns.ask(), turns.ask()
        turns.give_back(cancelled)  # cancelled while it waits
        assert (turns.running, turns.waiting) == (1, 1)
        turns.give_back(running)
        await next_one.ready
        assert not cancelled.ready.done()
        assert (turns.running, turns.waiting) == (1, 0)

    _run(scenario())


def test_a_new_job_does_not_jump_the_line_when_a_turn_frees():
    async def scenario():
        turns = Turns(count=1)
        running, waiting = turns.ask(), turns.ask()
        turns.give_back(running)  # the turn is handed to `waiting`, even before its loop wakes it
        late = turns.ask()
        await waiting.ready
        assert not late.ready.done()
        turns.give_back(waiting)
        await late.ready

    _run(scenario())


def test_a_turn_given_back_from_another_thread_wakes_the_waiting_job_on_its_loop():
    async def scenario():
        turns = Turns(count=1)
        running, waiting = turns.ask(), turns.ask()
        thread = threading.Thread(target=turns.give_back, args=(running,))
        thread.start()
        await waiting.ready
        thread.join(WAIT_S)
        assert turns.running == 1

    _run(scenario())


def test_a_turn_meant_for_a_job_whose_loop_has_closed_goes_to_the_next():
    turns = Turns(count=1)
    holder: dict = {}

    async def ask_and_leave():  # a job whose event loop ends while it waits
        holder["running"] = turns.ask()
        holder["gone"] = turns.ask()

    asyncio.run(ask_and_leave())

    async def next_job():
        ticket = turns.ask()
        turns.give_back(holder["running"])
        await ticket.ready
        assert (turns.running, turns.waiting) == (1, 0)

    _run(next_job())


def test_one_job_at_a_time_by_default():
    async def scenario():
        turns = Turns()
        first, second = turns.ask(), turns.ask()
        assert first.ready.done() and not second.ready.done()
        turns.give_back(first)
        await second.ready
        turns.give_back(second)

    _run(scenario())
