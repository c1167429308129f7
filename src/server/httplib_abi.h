// Debian's cpp-httplib is a compiled library (libcpp-httplib.so) built with TLS, zlib and
// brotli support, and those switches change the layout of its classes (httplib::Request has
// an SSL pointer), so every file that includes the header must see the same defines as the
// library did (pkg-config --cflags cpp-httplib). Include this, never <httplib.h> directly.
#pragma once
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif
#include <httplib.h>
