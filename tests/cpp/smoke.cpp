#include <pyattach/pyattach.hpp>
#include <cstdio>
#include <thread>
#include <vector>
int main() {
  pyattach::interpreter py;
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back([i] {
    for (int k = 0; k < 1000; ++k) {
      pyattach::attach_scope s;
      if (k == 0) PyRun_SimpleString("import threading; tl = threading.local()\n");
      pyattach::attach_scope inner;
      { pyattach::detach_scope d; }
      PyRun_SimpleString("import threading\nglobals().setdefault('L', threading.local())\nL.n = getattr(L, 'n', 0) + 1\n");
    }
    pyattach::attach_scope s;
    PyRun_SimpleString("print(threading.current_thread().name, L.n)\n");
  });
  for (auto& t : ts) t.join();
  std::printf("%s", pyattach::to_string(pyattach::make_thread_report()).c_str());
  auto a = pyattach::try_attach();
  a.release();
  a.release();
  return 0;
}
