//! The tenant's field definitions of `Account`, `User` and `Lead` (names as in the vendor swagger).

use std::sync::OnceLock;

use super::{FieldType, Schema};

use FieldType::*;

pub fn account_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "Account",
            &[
                ("Id", Int, true),
                ("Name", Text, false),
                ("CrmId", Text, false),
                ("Partner_Tier__cf", Text, false),
                ("Account_Status__cf", Text, true),
                ("Account_Owner__cf", Text, true),
                ("Account_Owner_Email__cf", Text, false),
                ("Partner_Type__cf", Text, false),
                ("Website", Text, false),
                ("MailingCity", Text, false),
                ("MailingCountry", Text, false),
                ("MailingCountryCode", Text, false),
                ("RegionId", Int, false),
                ("MemberCount", Int, true),
                ("ParentAccountId", Int, false),
                ("PrimaryUserId", Int, false),
                ("IsActive", Bool, false),
                ("IsTest", Bool, false),
                ("RecordLink", Text, true),
                ("Total_NPCU__cf", Float, false),
                ("Nintex_CE_Certifications__cf", Float, false),
                ("Nintex_K2_Certifications__cf", Float, false),
                ("Nintex_for_Salesforce_Certifications__cf", Float, false),
                ("Nintex_GTM_Certifications__cf", Float, false),
                ("Expert_Certifications__cf", Float, false),
                ("Practitioner_Certifications__cf", Float, true),
                ("Master_Certifications__cf", Float, true),
                ("LMS_Account_ID__cf", Text, false),
                ("LMS_Group_Name__cf", Text, false),
                ("LMS_Training_Dashboard__cf", Text, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}

pub fn user_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "User",
            &[
                ("Id", Int, true),
                ("Email", Text, false),
                ("UserName", Text, false),
                ("FirstName", Text, false),
                ("LastName", Text, false),
                ("FullName", Text, true),
                ("Title", Text, false),
                ("Phone", Text, false),
                ("AccountId", Int, false),
                ("AccountName", Text, true),
                ("IsActive", Bool, false),
                ("Contact_Status__cf", Text, false),
                ("CrmId", Text, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}

pub fn lead_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "Lead",
            &[
                ("Id", Int, true),
                ("FirstName", Text, false),
                ("LastName", Text, false),
                ("Email", Text, false),
                ("Company", Text, false),
                ("Status", Text, false),
                ("LeadSource", Text, false),
                ("PartnerAccountId", Int, false),
                ("EstimatedValue", Float, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}
