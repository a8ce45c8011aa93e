// The consumer: embeds CPython with pyattach and runs Python from a native thread.
#include <pyattach/pyattach.hpp>

#include <cstdio>
#include <thread>

int main() {
  pyattach::interpreter py;
  int rc = 1;
  std::thread worker([&] {
    pyattach::attach_scope scope;
    rc = PyRun_SimpleString(
        "import sys, threading\n"
        "print('consumer (' + '" CONSUMER_HOW "' + '): attached on Python', sys.version.split()[0],\n"
        "      'in', threading.current_thread().name, flush=True)\n");
  });
  worker.join();
  const auto states = pyattach::count_thread_states();
  std::printf("consumer: %zu thread state(s) after the worker exited\n", states ? *states : 0);
  return rc == 0 && states && *states == 1 ? 0 : 1;
}
