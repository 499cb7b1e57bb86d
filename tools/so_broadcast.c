/* LD_PRELOAD shim: every IPv4 UDP socket a program opens gets SO_BROADCAST.
 *
 * net-snmp's tools (snmpget, snmpwalk) set SO_BROADCAST only for sessions an
 * application flags SNMP_FLAGS_UDP_BROADCAST, which no command-line option
 * does, so the kernel refuses their datagrams to a broadcast address (EACCES).
 * The captures and lab scenario of the SNMP broadcast helper need the real
 * snmpget to send one: this flips that one socket option, nothing else.
 *
 *   cc -shared -fPIC -o so_broadcast.so tools/so_broadcast.c -ldl
 *   LD_PRELOAD=$PWD/so_broadcast.so snmpget -v2c -c public 10.0.2.255 1.3.6.1.2.1.1.1.0
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
    static int (*real_socket)(int, int, int);
    int on = 1, fd;

    if (!real_socket)
        real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    fd = real_socket(domain, type, protocol);
    if (fd >= 0 && domain == AF_INET && (type & 0xf) == SOCK_DGRAM)
        setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, sizeof(on));
    return fd;
}
