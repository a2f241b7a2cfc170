"""A small PySpark application for the lab tests: ``app.py MODE [ARGS]``, run by spark-submit as the job owner.

ok N        sum of the squares of 0..N-1 on the cluster; prints it with the driver's Unix user and Spark's user
raise       fails in the driver with ValueError
sleep S     two tasks that sleep S seconds (something to cancel, or to see as a running application)
busy S      two tasks that burn CPU for S seconds (CPU shares)
fork S      two tasks that fork a short command in a loop for S seconds (CPU shares of fork-heavy work)
"""
import getpass
import subprocess
import sys
import time

from pyspark.sql import SparkSession


def busy(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n


def fork(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        subprocess.run(["/bin/true"])
        n += 1
    return n


def main(mode, arg):
    sc = SparkSession.builder.getOrCreate().sparkContext
    if mode == "ok":
        total = sc.parallelize(range(int(arg)), 2).map(lambda x: x * x).sum()
        print(f"sum of squares {total}; driver user {getpass.getuser()}; spark user {sc.sparkUser()}", flush=True)
    elif mode == "raise":
        raise ValueError("the driver gave up on purpose")
    elif mode in ("sleep", "busy", "fork"):
        seconds = float(arg)
        work = {"sleep": time.sleep, "busy": busy, "fork": fork}[mode]
        print("tasks:", sc.parallelize(range(2), 2).map(lambda _: work(seconds)).collect(), flush=True)
    sc.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
