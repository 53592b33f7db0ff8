// The engine's own worker threads. Torch-free: included by ops.cpp only.
//
// at::parallel_for gives each thread one static slice and ends with a barrier, so on a machine
// shared with other processes one pre-empted thread holds every call up until the scheduler runs it
// again (measured: 2-thread calls 30x slower than their best, 1-thread calls 2x). Here the caller
// works too, chunks are claimed one at a time from a shared counter, and the caller waits only for
// helpers that joined the call: a helper kept off its core takes no work and delays nothing.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

namespace bitpacked {

using ChunkFn = std::function<void(int64_t begin, int64_t end)>;

class WorkPool {
 public:
  // Calls body(begin, end) on chunks of at most `chunk` items covering [0, items), on the calling
  // thread and up to threads - 1 helpers. Calls from several threads at once run one at a time
  // on the pool; a call made while the pool is busy runs on its own thread alone.
  void run(int64_t items, int64_t chunk, int threads, const ChunkFn& body);

  static WorkPool& instance();

 private:
  void add_helpers(int count);
  void helper_loop();
  void claim();

  std::mutex busy_;   // held by the caller of the job in progress
  std::mutex state_;  // guards the fields below up to `inside_`
  std::condition_variable wake_, idle_;
  int helpers_ = 0;
  const ChunkFn* body_ = nullptr;
  int64_t items_ = 0, chunk_ = 1;
  uint64_t generation_ = 0;
  int seats_ = 0;   // helpers that may still join the current job
  int inside_ = 0;  // helpers inside it
  bool open_ = false;
  std::atomic<int64_t> next_{0};
};

}  // namespace bitpacked
