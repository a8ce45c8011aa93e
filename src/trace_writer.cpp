// src/trace_writer.cpp — writes a trace session as Chrome trace-event JSON (what Perfetto and
// chrome://tracing open): each thread's spans in time order, spans still open closed at the
// write's time, instants, and the threads' names from the OS and from threading.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "observe_internal.hpp"

namespace pyattach::detail {

namespace {
std::string json_escape(const std::string& in) {
  std::string out;
  out.reserve(in.size() + 2);
  for (const char c : in) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

struct thread_events {
  std::uint64_t os_tid = 0;
  unsigned long ident = 0;
  std::string os_name;
  std::string python_name;
  std::vector<trace_event> events;
  std::uint64_t dropped = 0;
};

void copy_buffer(const trace_buffer* b, std::uint64_t session, thread_events& out) {
  if (b == nullptr || b->session.load(std::memory_order_acquire) != session) return;
  const std::uint32_t n = b->count.load(std::memory_order_acquire);
  out.events.assign(b->events.get(), b->events.get() + n);
  out.dropped = b->dropped.load(std::memory_order_relaxed);
}

const char* span_name(ev kind) noexcept {
  switch (kind) {
    case ev::wait_begin: case ev::wait_end: return "waiting for the GIL";
    case ev::attached_begin: case ev::attached_end: return "attached";
    case ev::detached_begin: case ev::detached_end: return "detached (blocking C++)";
    case ev::task_begin: case ev::task_end: return "task";
  }
  return "?";
}

bool is_begin(ev kind) noexcept {
  return kind == ev::wait_begin || kind == ev::attached_begin || kind == ev::detached_begin ||
         kind == ev::task_begin;
}

// threading's names of the live threads, if the calling thread holds the GIL or can take it for a
}  // namespace

// threading's names of the live threads, if the calling thread holds the GIL or can take it for a
// moment. Never called with g_trace_mutex held: a thread holding the GIL may be waiting for it.
std::map<unsigned long, std::string> names_if_possible(bool may_attach) noexcept {
  try {
    if (attached_here(tls_slot)) return python_thread_names();
    if (may_attach && Py_IsInitialized() != 0) {
      attach_scope py(nothrow);
      if (py) return python_thread_names();
    }
  } catch (...) {
  }
  return {};
}

// Called with g_trace_mutex held. Writes the running session's events to `path`.
trace_result write_trace_locked(const std::string& path,
                                const std::map<unsigned long, std::string>& names) noexcept {
  trace_result result;
  const std::uint64_t session = g_session.load(std::memory_order_acquire);
  if (session == 0) {
    result.error = "no trace is running";
    return result;
  }
  try {
    const std::uint64_t now = ticks();
    std::vector<thread_events> threads;
    {
      std::lock_guard<std::mutex> lock(registry().mutex);
      for_each_observer([&](slot* x, observer* o) {
        thread_events t;
        t.os_tid = x->os_tid;
        t.ident = x->py_ident;
        copy_buffer(o->buffer.load(std::memory_order_acquire), session, t);
        if (!t.events.empty() || t.dropped != 0) threads.push_back(std::move(t));
      });
    }
    for (thread_events& t : threads) t.os_name = thread_label(t.os_tid);
    for (const retired_buffer& r : retired_buffers()) {
      thread_events t;
      t.os_tid = r.os_tid;
      t.os_name = r.name + " [exited]";
      copy_buffer(r.buffer.get(), session, t);
      threads.push_back(std::move(t));
    }
    std::vector<instant_event> instants;
    std::uint64_t instants_dropped = 0;
    {
      std::lock_guard<std::mutex> lock(g_instants_mutex);
      instants = g_instants;
      instants_dropped = g_instants_dropped;
    }
    std::vector<std::pair<std::string, std::string>> labels;
    {
      std::lock_guard<std::mutex> lock(g_labels_mutex);
      labels = g_labels;
    }
    const double per_tick = ns_per_tick();
    const auto us = [&](std::uint64_t tick) {
      // Relative to clock_init, in CLOCK_MONOTONIC microseconds.
      const double ns = static_cast<double>(g_ns0) +
                        (static_cast<double>(tick) - static_cast<double>(g_tick0)) * per_tick;
      return ns / 1000.0;
    };
    const long pid = static_cast<long>(::getpid());
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) {
      result.error = "cannot open " + path + ": " + std::strerror(errno);
      return result;
    }
    std::fprintf(f, "{\"traceEvents\":[\n");
    std::fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%ld,\"tid\":0,"
                    "\"args\":{\"name\":\"pyattach trace (pid %ld)\"}}", pid, pid);
    std::uint64_t written = 0, dropped = instants_dropped;
    // A thread's instants go among its spans in time order (a thread's events must be in time
    // order: tools/trace_check.py); those of threads with no spans follow them all.
    std::stable_sort(instants.begin(), instants.end(),
                     [](const instant_event& a, const instant_event& b) {
                       return a.os_tid != b.os_tid ? a.os_tid < b.os_tid : a.tick < b.tick;
                     });
    std::vector<bool> instant_written(instants.size(), false);
    const auto write_instant = [&](std::size_t k) {
      const instant_event& i = instants[k];
      std::string args;
      if (!i.message.empty()) args = ",\"args\":{\"message\":\"" + json_escape(i.message) + "\"}";
      const bool misuse = i.name.rfind("misuse", 0) == 0;
      std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"i\",\"s\":\"%s\",\"pid\":%ld,"
                      "\"tid\":%" PRIu64 ",\"ts\":%.3f%s}",
                   json_escape(i.name).c_str(), misuse ? "misuse" : "pyattach", misuse ? "t" : "g",
                   pid, i.os_tid, us(i.tick), args.c_str());
      instant_written[k] = true;
      ++written;
    };
    std::string threads_meta;
    for (const thread_events& t : threads) {
      std::string name = t.os_name;
      const auto it = names.find(t.ident);
      if (t.ident != 0 && it != names.end()) name += " [python: " + it->second + "]";
      std::fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%ld,\"tid\":%" PRIu64
                      ",\"args\":{\"name\":\"%s\"}}", pid, t.os_tid, json_escape(name).c_str());
      // This thread's instants, [next, last): written before the first event after each.
      const auto before = [](const instant_event& i, std::uint64_t tid) { return i.os_tid < tid; };
      std::size_t next = static_cast<std::size_t>(
          std::lower_bound(instants.begin(), instants.end(), t.os_tid, before) - instants.begin());
      std::size_t last = next;
      while (last < instants.size() && instants[last].os_tid == t.os_tid) ++last;
      const auto instants_until = [&](std::uint64_t tick) {
        for (; next < last && instants[next].tick <= tick; ++next) {
          if (!instant_written[next]) write_instant(next);  // a reused tid's: written already
        }
      };
      // Spans still open now: closed at the write's time, marked open.
      std::vector<const trace_event*> stack;
      for (const trace_event& e : t.events) {
        instants_until(e.tick);
        if (is_begin(e.kind)) {
          stack.push_back(&e);
        } else if (!stack.empty()) {
          stack.pop_back();
        }
        std::string args;
        if (e.kind == ev::task_begin || e.kind == ev::task_end) {
          const bool known = e.aux < labels.size();
          args = ",\"args\":{\"pool\":\"" + json_escape(known ? labels[e.aux].first : "") +
                 "\",\"worker\":\"" + json_escape(known ? labels[e.aux].second : "") +
                 "\",\"task\":" + std::to_string(e.arg) + "}";
        } else if (e.arg != 0 && is_begin(e.kind)) {
          // A sub-interpreter's span (trace_recording.cpp): arg its id, aux whether its GIL is
          // its own; the main interpreter's spans carry none.
          const std::string id = std::to_string(static_cast<std::int64_t>(e.arg));
          args = ",\"args\":{\"interp\":" + id + ",\"gil\":" + (e.aux != 0 ? id : "0") + "}";
        }
        std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"%s\",\"pid\":%ld,\"tid\":%"
                        PRIu64 ",\"ts\":%.3f%s}",
                     span_name(e.kind), e.kind == ev::task_begin || e.kind == ev::task_end ? "pool" : "gil",
                     is_begin(e.kind) ? "B" : "E", pid, t.os_tid, us(e.tick), args.c_str());
        ++written;
      }
      instants_until(UINT64_MAX);  // recorded before `now`: before the open spans' closing
      const double end_us = std::max(us(now), t.events.empty() ? 0.0 : us(t.events.back().tick));
      for (auto it2 = stack.rbegin(); it2 != stack.rend(); ++it2) {
        std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"E\",\"pid\":%ld,\"tid\":%"
                        PRIu64 ",\"ts\":%.3f,\"args\":{\"open\":true}}",
                     span_name((*it2)->kind), (*it2)->kind == ev::task_begin ? "pool" : "gil", pid,
                     t.os_tid, end_us);
        ++written;
      }
      dropped += t.dropped;
      if (!threads_meta.empty()) threads_meta += ",";
      threads_meta += "{\"tid\":" + std::to_string(t.os_tid) + ",\"name\":\"" + json_escape(name) +
                      "\",\"events\":" + std::to_string(t.events.size()) +
                      ",\"dropped\":" + std::to_string(t.dropped) + "}";
    }
    for (std::size_t k = 0; k < instants.size(); ++k) {
      if (!instant_written[k]) write_instant(k);
    }
    std::fprintf(f, "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":{\"pyattach\":{\"clock\":\"%s\","
                    "\"dropped\":%" PRIu64 ",\"instants_dropped\":%" PRIu64 ",\"threads\":[%s]}}}\n",
                 g_obs_tsc.load(std::memory_order_relaxed) ? "tsc" : "clock_gettime(CLOCK_MONOTONIC)", dropped, instants_dropped,
                 threads_meta.c_str());
    const bool ok = std::fflush(f) == 0;
    std::fclose(f);
    if (!ok) {
      result.error = "cannot write " + path;
      return result;
    }
    result.ok = true;
    result.events = written;
    result.dropped = dropped;
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}


}  // namespace pyattach::detail
