//! Word lists the generators draw realistic names from.

pub const FIRST_NAMES: &[&str] = &[
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth",
    "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Donald", "Sandra",
    "Steven", "Ashley", "Paul", "Kimberly", "Andrew", "Emily", "Joshua", "Donna", "Kenneth", "Michelle",
    "Kevin", "Carol", "Brian", "Amanda", "George", "Melissa", "Timothy", "Deborah", "Ronald", "Stephanie",
    "Pat", "Jill", "Priya", "Wei", "Hiroshi", "Sofia", "Lukas", "Amelie", "Mateo", "Aisha", "Olusegun",
    "Chloe", "Liam", "Noah", "Olivia", "Ava", "Ethan", "Mia", "Lucas", "Zoe", "Ravi", "Anika", "Jorge",
    "Fatima", "Yuki", "Sven", "Ingrid", "Pierre", "Camille", "Giulia", "Marco", "Sean", "Siobhan",
];

pub const LAST_NAMES: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
    "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Patel",
    "Kumar", "Chen", "Wang", "Tanaka", "Muller", "Schmidt", "Dubois", "Rossi", "O'Brien", "Van der Berg",
    "Kowalski", "Novak", "Larsen", "Silva", "Costa", "Okafor", "Haddad", "Ivanova", "Murphy", "Kelly",
];

pub const COMPANY_HEADS: &[&str] = &[
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Vertex", "Pinnacle", "Summit", "Apex",
    "Blue Harbor", "Red Rock", "Silverline", "Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware",
    "Proseware", "Adatum", "Woodgrove", "Lucerne", "Trey", "Coho", "Wingtip", "Alpine", "Cascade",
    "Evergreen", "Ironclad", "Keystone", "Meridian", "Nimbus", "Orion", "Polaris", "Quantum", "Redwood",
    "Sapphire", "Titan", "Unity", "Vanguard", "Zenith", "Bright", "Clearview", "Digital", "Elevate",
    "Fusion", "Horizon", "Insight", "Kinetic", "Lumen", "Momentum", "Nexus", "Optimal", "Precision",
];

pub const COMPANY_TAILS: &[&str] = &[
    "Solutions", "Consulting", "Technologies", "Systems", "Partners", "Group", "Digital", "Labs",
    "Automation", "Advisory", "Networks", "Software", "Services", "Integration", "Analytics", "Works",
    "Cloud", "IT", "Data", "Process",
];

pub const COMPANY_SUFFIXES: &[&str] = &["", "", "", "Inc.", "Ltd", "LLC", "GmbH", "Pty Ltd", "Corporation", "S.A."];

pub const TLDS: &[&str] = &["com", "com", "com", "net", "io", "co.uk", "de", "com.au", "fr", "ca"];

pub const CITIES: &[(&str, &str, &str)] = &[
    ("Austin", "United States", "US"),
    ("Seattle", "United States", "US"),
    ("Chicago", "United States", "US"),
    ("London", "United Kingdom", "GB"),
    ("Manchester", "United Kingdom", "GB"),
    ("Berlin", "Germany", "DE"),
    ("Munich", "Germany", "DE"),
    ("Paris", "France", "FR"),
    ("Sydney", "Australia", "AU"),
    ("Melbourne", "Australia", "AU"),
    ("Toronto", "Canada", "CA"),
    ("Singapore", "Singapore", "SG"),
    ("Tokyo", "Japan", "JP"),
    ("Sao Paulo", "Brazil", "BR"),
    ("Johannesburg", "South Africa", "ZA"),
    ("Dubai", "United Arab Emirates", "AE"),
];

pub const PRODUCTS: &[&str] = &[
    "Nintex Automation Cloud", "Nintex K2", "Nintex for Salesforce", "Nintex RPA", "Nintex Process Manager",
    "Nintex DocGen", "Nintex Workflow", "Nintex Forms", "Nintex Analytics", "Nintex eSign",
];

pub const COURSE_TOPICS: &[&str] = &[
    "Fundamentals", "Certification", "Advanced Workflows", "Forms Design", "Administration", "Migration",
    "Integration", "Security", "Best Practices", "Sales Essentials", "Pre-Sales Technical", "Deployment",
    "Troubleshooting", "Data Connectors", "Expert Certification", "Practitioner Certification",
];

pub const TITLES: &[&str] = &[
    "Engineer", "Consultant", "Solution Architect", "Account Executive", "Sales Manager", "Developer",
    "Project Manager", "Director", "CTO", "Business Analyst", "Partner Manager", "",
];

pub const UNMATCHED_GROUPS: &[&str] = &[
    "Customer Cohort", "Employees", "Beta Program", "Webinar Attendees", "Internal - Sales",
    "Community Champions", "Trial Users", "Legacy Import", "Academy Pilot", "Former Partner",
];

pub const CAMPUSES: &[&str] = &[
    "Northgate", "Riverside", "Lakeshore", "Hillcrest", "Bayview", "Summit", "Westfield", "Eastport",
];

pub const DEPARTMENTS: &[&str] = &[
    "Engineering", "Business", "Health Sciences", "Arts", "Law", "Education", "Computing", "Design",
];

pub const PROGRAMS: &[&str] = &[
    "Bachelor of", "Diploma of", "Master of", "Certificate IV in", "Graduate Certificate in",
];

pub const SUBJECTS: &[&str] = &[
    "Introduction to", "Principles of", "Applied", "Foundations of", "Topics in", "Research Methods in",
];

pub const ITEM_NOUNS: &[&str] = &[
    "Bolt", "Washer", "Bracket", "Cable", "Sensor", "Valve", "Pump", "Bearing", "Gasket", "Filter",
    "Switch", "Relay", "Panel", "Hinge", "Clamp", "Fan", "Motor", "Spring", "Nozzle", "Adapter",
];

pub const ITEM_ADJS: &[&str] = &[
    "Steel", "Brass", "Heavy-Duty", "Compact", "Industrial", "Micro", "Stainless", "Copper", "Sealed",
    "Insulated",
];
