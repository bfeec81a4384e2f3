# The shared-memory store's tests (segment format, rings, store, client + server). Included from
# tests/kvstore/CMakeLists.txt. Each test forks at most a few children and runs well under a
# minute.
ihip_add_test(${CMAKE_CURRENT_LIST_DIR}/shm_segment_test.cc LIBS ihip_kvstore_shm TIMEOUT 120)
ihip_add_test(${CMAKE_CURRENT_LIST_DIR}/ring_test.cc LIBS ihip_kvstore_shm TIMEOUT 120)
ihip_add_test(${CMAKE_CURRENT_LIST_DIR}/store_test.cc LIBS ihip_kvstore TIMEOUT 120)
ihip_add_test(${CMAKE_CURRENT_LIST_DIR}/kv_store_client_test.cc
  LIBS ihip_kvstore ihip_kvstore_client TIMEOUT 180)
