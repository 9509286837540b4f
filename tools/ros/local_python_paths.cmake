# Point imported targets at this machine's Python and numpy headers.
#
# The ROS 2 wheels on PyPI are built in a manylinux container, and some of their exported CMake files
# (<pkg>__rosidl_generator_py targets) hard-code that container's include paths
# (/opt/python/cp3XX-cp3XX/include/python3.X, .../numpy/_core/include). A build against the wheels
# (tools/install_ros.sh) calls mvs_fix_python_include_dirs() before ament_package() to replace every such
# non-existent path by the local interpreter's. Paths that exist are left alone, so this is a no-op in a
# regular ROS 2 distribution.
function(mvs_fix_python_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_property(_targets DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t ${_targets})
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new "")
    set(_changed FALSE)
    foreach(_d ${_dirs})
      if(NOT EXISTS "${_d}" AND _d MATCHES "numpy/(_core/|core/)?include$")
        list(APPEND _new ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(NOT EXISTS "${_d}" AND _d MATCHES "include/python3\\.[0-9]+$")
        list(APPEND _new ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new "${_d}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new)
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
    endif()
  endforeach()
endfunction()
