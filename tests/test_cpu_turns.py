"""CPU turns: compute-heavy calls of one process run one at a time, first come first served."""

import threading
import time

from treesearch.policy.cpu_turns import CPUTurns


def test_turns_never_overlap_and_a_waiting_thread_goes_before_the_holder_returns():
    turns = CPUTurns()
    inside, overlaps, order = [0], [0], []
    lock = threading.Lock()

    def work(name: str, times: int, hold: float) -> None:
        for _ in range(times):
            with turns.turn():
                with lock:
                    inside[0] += 1
                    overlaps[0] = max(overlaps[0], inside[0])
                order.append(name)
                time.sleep(hold)
                with lock:
                    inside[0] -= 1

    engine = threading.Thread(target=work, args=("step", 20, 0.005))
    engine.start()
    time.sleep(0.02)  # the engine is taking turn after turn
    critic = threading.Thread(target=work, args=("prm", 2, 0.005))
    critic.start()
    engine.join()
    critic.join()
    assert overlaps[0] == 1
    first, second = order.index("prm"), len(order) - 1 - order[::-1].index("prm")
    assert second < len(order) - 1, "the engine took every turn before the critic's second"
    assert second - first <= 3  # the engine took a turn or two between, not all the rest
