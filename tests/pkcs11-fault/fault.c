/*
 * fault.c: a fault-injecting PKCS#11 module for the certd end-to-end tests.
 *
 * certd loads this shared library in place of SoftHSM2. The library loads
 * the real module itself, forwards every call to it and, when told to,
 * makes a few calls fail the way a broken token would:
 *
 *   CERTD_FAULT_REAL_MODULE  the real PKCS#11 module to wrap
 *                            (default /usr/lib/softhsm/libsofthsm2.so)
 *   CERTD_FAULT_CONTROL      file whose first word is the fault mode;
 *                            read again at every overridden call, so a
 *                            test changes the mode of a running daemon by
 *                            rewriting the file (atomically, by rename)
 *   CERTD_FAULT_COUNT        file that gets one line per injected fault,
 *                            "<mode> <function>\n" (optional)
 *
 * The modes:
 *
 *   pass     every call is forwarded (also: variable unset, file missing
 *            or empty, or a word this file does not know)
 *   error    C_GetSlotList, C_GetTokenInfo, C_OpenSession, C_GetSessionInfo,
 *            C_Login, C_FindObjectsInit, C_SignInit and C_Sign return
 *            CKR_DEVICE_ERROR without reaching the real module: a dead HSM
 *   corrupt  C_Sign is forwarded; when it succeeds and wrote a signature
 *            (non-NULL buffer), one bit in the middle of the signature is
 *            flipped: a token that returns a wrong signature. Size queries
 *            (NULL buffer) are left alone.
 *   stall    C_Sign hangs: it records the fault when it starts to wait,
 *            then reads the control file every few milliseconds for as long
 *            as the mode is stall, and goes on in the mode it finds then
 *            (a token that takes its time; the test decides how long).
 *            Every other call is forwarded.
 *
 * Everything else (C_Initialize, C_GetInfo, key generation, ...) is always
 * forwarded unchanged.
 *
 * The module is used from many threads at once. The only global state is
 * what the one-time initialisation (pthread_once) sets up: the real
 * module's function list, the copy of it handed out to callers, and the two
 * file names. The override functions only read that state; each keeps what
 * it needs on its own stack.
 *
 * The header comes from p11-kit (-I/usr/include/p11-kit-1). Unlike the
 * OASIS header it needs no CK_PTR, CK_DEFINE_FUNCTION, ... definitions from
 * its user, and without CRYPTOKI_GNU it offers the standard CK_* names.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Werror -I/usr/include/p11-kit-1 \
 *            -o libcertd-fault-pkcs11.so fault.c -ldl -lpthread
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_REAL_MODULE "/usr/lib/softhsm/libsofthsm2.so"

/* The library exports C_GetFunctionList and nothing else: every other
 * function is static and reached through the function list. */
#define FAULT_EXPORT __attribute__((visibility("default")))

enum fault_mode {
	MODE_PASS,
	MODE_ERROR,
	MODE_CORRUPT,
	MODE_STALL,
};

/* ---- State set once by init() ------------------------------------------ */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
/* CKR_OK once the real module is loaded; why not otherwise. */
static CK_RV init_rv = CKR_GENERAL_ERROR;
/* The real module's function list. */
static CK_FUNCTION_LIST_PTR real;
/* The list handed out by C_GetFunctionList: a copy of the real one with
 * some entries replaced. */
static CK_FUNCTION_LIST fault_list;
/* CERTD_FAULT_CONTROL and CERTD_FAULT_COUNT; empty when unset. */
static char control_path[PATH_MAX];
static char count_path[PATH_MAX];

/* ---- Fault mode and fault log ------------------------------------------ */

/* Reads the current mode from the control file: one open, read, close. */
static enum fault_mode current_mode(void)
{
	char buf[64];
	ssize_t n;
	int fd;

	if (control_path[0] == '\0')
		return MODE_PASS;
	fd = open(control_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return MODE_PASS;
	do {
		n = read(fd, buf, sizeof(buf) - 1);
	} while (n < 0 && errno == EINTR);
	close(fd);
	if (n <= 0)
		return MODE_PASS;
	buf[n] = '\0';

	/* The first word: skip leading blanks, stop at the next one. */
	char *word = buf + strspn(buf, " \t\r\n");
	word[strcspn(word, " \t\r\n")] = '\0';

	if (strcmp(word, "error") == 0)
		return MODE_ERROR;
	if (strcmp(word, "corrupt") == 0)
		return MODE_CORRUPT;
	if (strcmp(word, "stall") == 0)
		return MODE_STALL;
	return MODE_PASS;
}

/* Waits while the mode is stall; returns the mode that ended the wait. */
static enum fault_mode wait_while_stalled(void)
{
	const struct timespec poll = { .tv_sec = 0, .tv_nsec = 5 * 1000 * 1000 };
	enum fault_mode mode;

	while ((mode = current_mode()) == MODE_STALL)
		nanosleep(&poll, NULL);
	return mode;
}

/* Appends "<what> <function>\n" to the count file, if there is one. A single
 * write() on an O_APPEND descriptor, so lines from concurrent calls (and
 * processes) do not interleave. */
static void record_fault(const char *what, const char *function)
{
	char line[128];
	int len, fd;
	ssize_t n;

	if (count_path[0] == '\0')
		return;
	len = snprintf(line, sizeof(line), "%s %s\n", what, function);
	if (len < 0 || (size_t)len >= sizeof(line))
		return;
	fd = open(count_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		char reason[128];

		/* The GNU strerror_r: thread-safe, returns the message. */
		fprintf(stderr, "pkcs11-fault: cannot open %s: %s\n", count_path,
			strerror_r(errno, reason, sizeof(reason)));
		return;
	}
	do {
		n = write(fd, line, (size_t)len);
	} while (n < 0 && errno == EINTR);
	if (n != len)
		fprintf(stderr, "pkcs11-fault: cannot write %s\n", count_path);
	close(fd);
}

/* In error mode: records the fault and yields CKR_DEVICE_ERROR from the
 * calling override. */
#define FAIL_IF_ERROR_MODE(function)                         \
	do {                                                 \
		if (current_mode() == MODE_ERROR) {          \
			record_fault("error", function);     \
			return CKR_DEVICE_ERROR;             \
		}                                            \
	} while (0)

/* ---- Overrides ------------------------------------------------------------ */

static CK_RV fault_C_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR list,
				 CK_ULONG_PTR count)
{
	FAIL_IF_ERROR_MODE("C_GetSlotList");
	return real->C_GetSlotList(token_present, list, count);
}

static CK_RV fault_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	FAIL_IF_ERROR_MODE("C_GetTokenInfo");
	return real->C_GetTokenInfo(slot, info);
}

static CK_RV fault_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags,
				 CK_VOID_PTR application, CK_NOTIFY notify,
				 CK_SESSION_HANDLE_PTR session)
{
	FAIL_IF_ERROR_MODE("C_OpenSession");
	return real->C_OpenSession(slot, flags, application, notify, session);
}

static CK_RV fault_C_GetSessionInfo(CK_SESSION_HANDLE session,
				    CK_SESSION_INFO_PTR info)
{
	FAIL_IF_ERROR_MODE("C_GetSessionInfo");
	return real->C_GetSessionInfo(session, info);
}

static CK_RV fault_C_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user_type,
			   CK_UTF8CHAR_PTR pin, CK_ULONG pin_len)
{
	FAIL_IF_ERROR_MODE("C_Login");
	return real->C_Login(session, user_type, pin, pin_len);
}

static CK_RV fault_C_FindObjectsInit(CK_SESSION_HANDLE session,
				     CK_ATTRIBUTE_PTR templ, CK_ULONG count)
{
	FAIL_IF_ERROR_MODE("C_FindObjectsInit");
	return real->C_FindObjectsInit(session, templ, count);
}

static CK_RV fault_C_SignInit(CK_SESSION_HANDLE session,
			      CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key)
{
	FAIL_IF_ERROR_MODE("C_SignInit");
	return real->C_SignInit(session, mechanism, key);
}

static CK_RV fault_C_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data,
			  CK_ULONG data_len, CK_BYTE_PTR signature,
			  CK_ULONG_PTR signature_len)
{
	/* Read once: the same mode decides before and after the real call. */
	enum fault_mode mode = current_mode();
	CK_RV rv;

	if (mode == MODE_STALL) {
		record_fault("stall", "C_Sign");
		mode = wait_while_stalled();
	}
	if (mode == MODE_ERROR) {
		record_fault("error", "C_Sign");
		return CKR_DEVICE_ERROR;
	}
	rv = real->C_Sign(session, data, data_len, signature, signature_len);
	if (mode == MODE_CORRUPT && rv == CKR_OK && signature != NULL &&
	    signature_len != NULL && *signature_len > 0) {
		/* The lowest bit of the middle byte: for ECDSA (r || s) the
		 * first byte of s, for RSA a byte well inside the value. */
		signature[*signature_len / 2] ^= 0x01;
		record_fault("corrupt", "C_Sign");
	}
	return rv;
}

/* ---- Loading the real module --------------------------------------------- */

/* Copies the variable `name` into `dst`, or leaves `dst` empty. */
static void copy_env(char *dst, size_t size, const char *name)
{
	const char *value = getenv(name);

	dst[0] = '\0';
	if (value == NULL || value[0] == '\0')
		return;
	if (strlen(value) >= size) {
		fprintf(stderr, "pkcs11-fault: %s is too long; ignored\n", name);
		return;
	}
	strcpy(dst, value);
}

static void init(void)
{
	const char *module = getenv("CERTD_FAULT_REAL_MODULE");
	CK_C_GetFunctionList get_function_list;
	CK_RV rv;
	void *handle;

	copy_env(control_path, sizeof(control_path), "CERTD_FAULT_CONTROL");
	copy_env(count_path, sizeof(count_path), "CERTD_FAULT_COUNT");

	if (module == NULL || module[0] == '\0')
		module = DEFAULT_REAL_MODULE;
	/* Local binding keeps the real module's C_* symbols from standing in
	 * for ours; the handle stays open for the life of the process. */
	handle = dlopen(module, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		fprintf(stderr, "pkcs11-fault: cannot load %s: %s\n", module,
			dlerror());
		return;
	}
	/* POSIX guarantees that a data pointer from dlsym converts to a
	 * function pointer; the memcpy keeps -Wpedantic quiet about it. */
	void *sym = dlsym(handle, "C_GetFunctionList");
	if (sym == NULL) {
		fprintf(stderr, "pkcs11-fault: %s has no C_GetFunctionList\n",
			module);
		return;
	}
	memcpy(&get_function_list, &sym, sizeof(get_function_list));

	rv = get_function_list(&real);
	if (rv != CKR_OK || real == NULL) {
		fprintf(stderr,
			"pkcs11-fault: C_GetFunctionList of %s failed: 0x%lx\n",
			module, (unsigned long)rv);
		real = NULL;
		init_rv = rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
		return;
	}

	/* The real list, version included, with the faulty entries. */
	fault_list = *real;
	fault_list.C_GetSlotList = fault_C_GetSlotList;
	fault_list.C_GetTokenInfo = fault_C_GetTokenInfo;
	fault_list.C_OpenSession = fault_C_OpenSession;
	fault_list.C_GetSessionInfo = fault_C_GetSessionInfo;
	fault_list.C_Login = fault_C_Login;
	fault_list.C_FindObjectsInit = fault_C_FindObjectsInit;
	fault_list.C_SignInit = fault_C_SignInit;
	fault_list.C_Sign = fault_C_Sign;
	fault_list.C_GetFunctionList = C_GetFunctionList;
	init_rv = CKR_OK;
}

/* ---- The one exported function -------------------------------------------- */

FAULT_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	if (list == NULL)
		return CKR_ARGUMENTS_BAD;
	if (pthread_once(&init_once, init) != 0)
		return CKR_GENERAL_ERROR;
	if (init_rv != CKR_OK)
		return init_rv;
	*list = &fault_list;
	return CKR_OK;
}
