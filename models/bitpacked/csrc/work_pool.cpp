// WorkPool (work_pool.h): helpers sleep on a condition variable between calls and join a call only
// while it still has unclaimed chunks.
#include "work_pool.h"

#include <thread>

namespace bitpacked {

WorkPool& WorkPool::instance() {
  // Never destroyed: its detached helpers may still wait on it while the process exits.
  static WorkPool* pool = new WorkPool;
  return *pool;
}

void WorkPool::add_helpers(int count) {
  for (; helpers_ < count; ++helpers_) std::thread([this] { helper_loop(); }).detach();
}

void WorkPool::claim() {
  for (int64_t begin = next_.fetch_add(chunk_); begin < items_; begin = next_.fetch_add(chunk_)) {
    (*body_)(begin, begin + chunk_ < items_ ? begin + chunk_ : items_);
  }
}

void WorkPool::helper_loop() {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(state_);
  for (;;) {
    wake_.wait(lock, [&] { return open_ && generation_ != seen && seats_ > 0; });
    seen = generation_;
    --seats_;
    ++inside_;
    lock.unlock();
    claim();
    lock.lock();
    if (--inside_ == 0) idle_.notify_one();
  }
}

void WorkPool::run(int64_t items, int64_t chunk, int threads, const ChunkFn& body) {
  if (items <= 0) return;
  chunk = chunk < 1 ? 1 : chunk;
  std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
  if (!busy.owns_lock() || threads <= 1 || items <= chunk) {
    for (int64_t begin = 0; begin < items; begin += chunk) body(begin, begin + chunk < items ? begin + chunk : items);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(state_);
    add_helpers(threads - 1);
    body_ = &body;
    items_ = items;
    chunk_ = chunk;
    next_.store(0);
    seats_ = threads - 1;
    open_ = true;
    ++generation_;
  }
  wake_.notify_all();
  claim();
  std::unique_lock<std::mutex> lock(state_);
  open_ = false;  // every chunk is claimed: no helper joins from now on
  idle_.wait(lock, [&] { return inside_ == 0; });
  body_ = nullptr;
}

}  // namespace bitpacked
